"""``embedkit embed`` and ``embedkit info``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..config import BACKENDS, LONG_TEXT_MODES, STORAGE_DTYPES, ExtractConfig, default_model
from ..engines import DEFAULT_PART_ROWS, ENGINES, Engine, JobEngine, LocalEngine
from ..engines.ray import RAY_PART_ROWS
from ..summary import summary_text
from . import _apply, cli, input_options, ray_address_option, runtime_options, split_commas, wait_option


def split_layers(ctx, param, values):
    """--layer takes comma-separated lists like --pooling does: --layer 0,6,-1 == --layer 0 --layer 6 --layer -1."""
    layers = split_commas(ctx, param, values)
    bad = [v for v in layers if not v.lstrip("-").isdigit()]
    if bad:
        raise click.BadParameter(f"{bad[0]!r} is not a layer index (0 = embeddings, i = block i, -1 = last)")
    return tuple(int(v) for v in layers)


def vector_options(f):
    """Options that define the vectors' model and windows (with --layer/--pooling/--dtype: the ExtractConfig)."""
    return _apply(
        f,
        [
            click.option(
                "--model",
                "-m",
                default=None,
                help="Hub id or local directory [default: $EMBEDKIT_MODEL or openai-community/gpt2].",
            ),
            click.option("--revision", default=None, help="Hub revision (branch, tag or commit)."),
            click.option(
                "--max-length",
                type=click.IntRange(min=2),
                default=None,
                help="Tokens per window [default: the model's limit, 1024 for GPT-2].",
            ),
            click.option(
                "--long-text",
                type=click.Choice(LONG_TEXT_MODES),
                default="truncate",
                show_default=True,
                help="Texts over --max-length: cut (recorded) or split into overlapping windows.",
            ),
            click.option(
                "--stride",
                type=click.IntRange(min=0),
                default=None,
                help="Tokens shared by consecutive windows with --long-text chunk [default: max-length/8].",
            ),
            click.option("--trust-remote-code", is_flag=True, help="Allow the model's own Python code to run."),
        ],
    )


def make_config(
    model,
    revision,
    layers,
    pooling,
    max_length,
    long_text,
    stride,
    normalize=False,
    dtype="float32",
    trust_remote_code=False,
    backend="torch",
):
    return ExtractConfig(
        model=model or default_model(),
        revision=revision,
        layers=tuple(layers) or (-1,),
        pooling=tuple(pooling) or ("mean",),
        max_length=max_length,
        long_text=long_text,
        stride=stride,
        normalize=normalize,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        backend=backend,
    )


@cli.command()
@click.argument("input", metavar="INPUT")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(),
    help="Output .parquet file, or a directory ending in / for a sharded dataset (see --shard-rows); "
    "--engine ray always writes a dataset directory (its workers write the shards).",
)
@click.option(
    "--layer",
    "-l",
    "layers",
    multiple=True,
    callback=split_layers,
    metavar="INTEGER",
    help="Hidden-state index: 0 = embeddings, i = block i, -1 = last [default: -1]. Repeatable.",
)
@click.option(
    "--pooling",
    "-p",
    multiple=True,
    callback=split_commas,
    help="mean, last, max, first, weighted-mean [default: mean]. Repeatable.",
)
@click.option("--normalize", is_flag=True, help="L2-normalise the stored vectors.")
@click.option(
    "--vector-dtype",
    "--dtype",
    "dtype",
    type=click.Choice(STORAGE_DTYPES),
    default="float32",
    show_default=True,
    help="Storage dtype of the vectors: int8 = per-dimension scale (4x smaller), binary = sign bits (32x smaller); "
    "every stage reads them back as float32.",
)
@click.option("--resume", is_flag=True, help="Continue a killed run of the same command.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing output (and discard a partial run); the old one stays until the new one is whole.",
)
@wait_option
@click.option("--strict", is_flag=True, help="Stop at the first row that cannot be embedded instead of recording it.")
@click.option(
    "--part-rows",
    type=click.IntRange(min=1),
    default=None,
    help="Rows per committed part: the most a kill can cost, and the window texts are length-sorted in "
    f"[default: {DEFAULT_PART_ROWS}, {RAY_PART_ROWS} with --engine ray].",
)
@click.option(
    "--shard-rows",
    type=click.IntRange(min=1),
    default=None,
    help="Write a sharded dataset directory (part-NNNNN.parquet + manifest) of this many rows per shard; every "
    "stage reads it as one file [default with -o DIR/: --part-rows].",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="local",
    show_default=True,
    help="Run in this process, or on a Ray cluster (pip install 'embedkit[ray]').",
)
@ray_address_option
@click.option(
    "--workers",
    default=None,
    metavar="N|MIN:MAX",
    help="With --engine ray: model actors, or MIN:MAX for a pool that grows with the work "
    "[default: as many as the cluster has room for].",
)
@click.option(
    "--gpus-per-worker",
    type=click.FloatRange(min=0),
    default=0.0,
    help="With --engine ray: GPUs per actor (0.5 = two actors share a GPU) [default: 0, CPU].",
)
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default="torch",
    show_default=True,
    help="torch: exact. int8: dynamic int8 linear layers on CPU, ~1.5x faster, "
    "approximate (cosine >= 0.99 to torch). bf16: bfloat16 linear layers on CPUs with native bf16, "
    "fp32 elsewhere (said so). openvino: OpenVINO fp32, exact; ort-int8: ONNX Runtime dynamic int8, "
    "approximate (both: an ONNX export cached per model and layers; extras [openvino], [onnx]). "
    "auto: torch or openvino, whichever measured faster on this machine (measured once, on a large input; "
    "cached). Recorded in the metadata (auto: the one it ran on).",
)
@vector_options
@input_options
@runtime_options
def embed(
    spec,
    output,
    layers,
    pooling,
    normalize,
    dtype,
    resume,
    overwrite,
    wait,
    strict,
    part_rows,
    shard_rows,
    engine,
    ray_address,
    workers,
    gpus_per_worker,
    backend,
    model,
    revision,
    max_length,
    long_text,
    stride,
    trust_remote_code,
    runtime,
):
    """Embed the texts of INPUT (CSV, TSV, JSONL, Parquet or TXT; a file, directory or glob, local or a URI such as
    s3://, gs://, hdfs:// or file://) into Parquet: one file, or a sharded dataset directory (a local or shared
    path)."""
    from ..embed import embed as run_embed

    config = make_config(
        model, revision, layers, pooling, max_length, long_text, stride, normalize, dtype, trust_remote_code, backend
    )
    chosen: Engine | JobEngine
    if engine == "ray":
        from ..engines.ray import RayEngine

        chosen = RayEngine(ray_address, workers, gpus_per_worker)
    elif ray_address or workers or gpus_per_worker:
        raise click.UsageError("--ray-address, --workers and --gpus-per-worker need --engine ray")
    else:
        chosen = LocalEngine()
    summary = run_embed(
        spec,
        output,
        config,
        runtime,
        engine=chosen,
        resume=resume,
        overwrite=overwrite,
        wait=wait,
        strict=strict,
        part_rows=part_rows,
        shard_rows=shard_rows,
    )
    click.echo(summary_text(summary), err=True)


@cli.command()
@click.argument("file", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info(file, as_json):
    """Show rows, columns, dimensions, row statuses and extraction settings of a features FILE or sharded dataset
    directory, or the classes, settings and evaluation (per group too) of a classifier model directory."""
    from ..store import describe, is_features_file

    if Path(file).is_dir() and not is_features_file(file):  # a directory: a classifier model or a sharded dataset
        from ..classify import describe_model, model_info_lines

        model = describe_model(file)
        click.echo(json.dumps(model, indent=2, default=str) if as_json else "\n".join(model_info_lines(model)))
        return
    d = describe(file)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    shards = f" in {d['shards']} shards" if "shards" in d else ""
    click.echo(f"file      {d['path']}\nrows      {d['rows']}{shards}\ncreated   {d['created_at']}")
    m = d["model"]
    click.echo(
        f"model     {m.get('name')} ({m.get('model_type')}, "
        f"{m.get('num_layers')} layers, hidden {m.get('hidden_size')})"
    )
    click.echo("settings  " + ", ".join(f"{k}={v}" for k, v in d["config"].items()))
    click.echo("status    " + (", ".join(f"{k}: {v}" for k, v in sorted(d["status_counts"].items())) or "-"))
    click.echo("columns")
    for name, typ in d["columns"].items():
        dim = d["embedding_dims"].get(name)
        click.echo(f"  {name:<28} {typ}" + (f"  (dim {dim})" if dim else ""))
