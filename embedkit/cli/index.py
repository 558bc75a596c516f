"""``embedkit index build``, ``embedkit index add`` and ``embedkit search``."""

from __future__ import annotations

import json
import shutil

import click

from ..engines import ENGINES
from ..index import CODES, DEFAULT_K, DEFAULT_MEMORY, DEFAULT_TARGET_RECALL, KINDS, METRICS
from . import (
    cli,
    input_options,
    quiet_option,
    ray_address_option,
    runtime_options,
    trust_artefact_option,
    wait_option,
)
from .embed import split_commas


@cli.group()
def index():
    """Build and grow FAISS similarity indexes of a features file."""


@index.command("build")
@click.argument("features", type=click.Path())  # a file or a sharded dataset directory
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Index directory to create.")
@click.option(
    "--kind",
    type=click.Choice(KINDS),
    default="auto",
    show_default=True,
    help="auto picks by rows, dimension and --memory.",
)
@click.option("--metric", type=click.Choice(METRICS), default="cosine", show_default=True)
@click.option("--memory", default=DEFAULT_MEMORY, show_default=True, help="RAM budget for the index (e.g. 512MB, 4GB).")
@click.option("--column", default=None, help="Embedding column [default: the only one].")
@click.option(
    "--store",
    multiple=True,
    callback=split_commas,
    help="More columns kept for display in search results (the text column is kept by default).",
)
@click.option(
    "--no-store-text",
    is_flag=True,
    help="Do not keep the features' text column (the input's text column, else 'text') in the index.",
)
@click.option("--no-store", is_flag=True, help="Keep only ids in the index (no text, no --store columns).")
@click.option(
    "--target-recall",
    type=click.FloatRange(0, 1, min_open=True),
    default=DEFAULT_TARGET_RECALL,
    show_default=True,
    help="recall@10 that nprobe/efSearch are tuned to reach.",
)
@click.option(
    "--rescore-with",
    type=click.Path(),
    default=None,
    help="For int8/binary FEATURES: float features of the same rows; search re-ranks candidates with them.",
)
@click.option(
    "--rescore-factor",
    type=click.IntRange(1, 1000),
    default=10,
    show_default=True,
    help="With --rescore-with: candidates fetched per hit (k x factor) before re-ranking.",
)
@click.option(
    "--codes",
    type=click.Choice(CODES),
    default=None,
    help="How flat/hnsw/ivf hold the vectors: float32, or sq8 (8-bit scalar quantizer, 1 byte a dimension) "
    "[default: sq8 for int8 FEATURES, float32 otherwise; binary FEATURES are held as float32].",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="local",
    show_default=True,
    help="ray: Ray tasks add the shards of a sharded dataset FEATURES in parallel and this process merges them "
    "into the index the local build makes (flat, ivf, ivfpq; an hnsw graph cannot be merged and is built here).",
)
@ray_address_option
@click.option(
    "--workers",
    default=None,
    metavar="N",
    help="With --engine ray: shard groups added at once [default: the cluster's CPUs].",
)
@click.option("--overwrite", is_flag=True, help="Replace an index already in the directory.")
@wait_option
@click.option("--json", "as_json", is_flag=True, help="Print the build report as JSON.")
@quiet_option
def build(
    features,
    output,
    kind,
    metric,
    memory,
    column,
    store,
    no_store_text,
    no_store,
    target_recall,
    rescore_with,
    rescore_factor,
    codes,
    engine,
    ray_address,
    workers,
    overwrite,
    wait,
    as_json,
    quiet,
):
    """Build a similarity index of FEATURES (a Parquet from `embedkit embed`, or a sharded dataset directory) into a
    directory."""
    from ..errors import ConfigError
    from ..index import build_index

    if no_store and store:
        raise ConfigError("--no-store keeps only ids; it cannot be combined with --store")
    adds = None
    if engine == "ray":
        from ..index.ray_build import RayAdds

        adds = RayAdds(ray_address, workers)
    elif ray_address or workers:
        raise click.UsageError("--ray-address and --workers need --engine ray")
    report = build_index(
        features,
        output,
        kind=kind,
        metric=metric,
        memory=memory,
        column=column,
        store=list(store),
        store_text=not (no_store or no_store_text),
        target_recall=target_recall,
        rescore_with=rescore_with,
        rescore_factor=rescore_factor,
        codes=codes,
        overwrite=overwrite,
        wait=wait,
        progress=not quiet,
        engine=adds,
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for line in report.summary_lines():
            click.echo(line, err=True)


def _grow_options(command):
    """INDEX_DIR, FEATURES and the options of the commands that add rows to an index (add, upsert)."""
    for option in (
        quiet_option,
        wait_option,
        click.option(
            "--rescore-with",
            type=click.Path(),
            default=None,
            help="Float features of the added rows (an index built with --rescore-with needs them).",
        ),
        click.option("--column", default=None, help="Embedding column [default: the one the index was built from]."),
        click.argument("features", type=click.Path()),
        click.argument("index_dir", type=click.Path(file_okay=False)),
    ):
        command = option(command)
    return command


@index.command("add")
@_grow_options
def add(index_dir, features, column, rescore_with, wait, quiet):
    """Add the rows of FEATURES (embedded with the index's settings) to INDEX_DIR without rebuilding."""
    from ..index import add_to_index

    _, report = add_to_index(
        index_dir, features, column=column, rescore_with=rescore_with, wait=wait, progress=not quiet
    )
    for line in report.summary_lines():
        click.echo(line, err=True)


@index.command("upsert")
@_grow_options
def upsert(index_dir, features, column, rescore_with, wait, quiet):
    """Add the rows of FEATURES to INDEX_DIR; a row whose id is already there replaces the old one."""
    from ..index import add_to_index

    _, report = add_to_index(
        index_dir, features, column=column, upsert=True, rescore_with=rescore_with, wait=wait, progress=not quiet
    )
    for line in report.summary_lines():
        click.echo(line, err=True)


@index.command("delete")
@click.argument("index_dir", type=click.Path(file_okay=False))
@click.argument("ids", nargs=-1)
@click.option(
    "--ids",
    "id_files",
    multiple=True,
    help="An id, or a file of ids (one per line, or a Parquet file's id column); repeatable.",
)
@click.option("--strict", is_flag=True, help="Fail (exit 3) when an id is not in the index, deleting nothing.")
@wait_option
def delete(index_dir, ids, id_files, strict, wait):
    """Delete the rows with these IDS from INDEX_DIR (search skips them; compacted past 20% deleted)."""
    from ..index import delete_from_index, read_ids

    report = delete_from_index(index_dir, read_ids([*ids, *id_files]), strict=strict, wait=wait)
    for line in report.summary_lines():
        click.echo(line, err=True)


@index.command("compact")
@click.argument("index_dir", type=click.Path(file_okay=False))
@wait_option
def compact(index_dir, wait):
    """Drop the deleted rows of INDEX_DIR for good (rebuilds an HNSW graph from its own vectors)."""
    from ..index import compact_index

    for line in compact_index(index_dir, wait=wait).summary_lines():
        click.echo(line, err=True)


@cli.command()
@click.argument("index_dir", type=click.Path(file_okay=False))
@click.argument("query", required=False)
@click.option("-k", "k", type=int, default=DEFAULT_K, show_default=True, help="Hits per query.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--queries",
    type=click.Path(),
    default=None,
    help="File of queries (CSV/TSV/JSONL/Parquet/TXT, or a features Parquet); needs -o.",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Parquet for --queries hits.")
@input_options(
    path="queries",
    text_default=None,
    text_help="Query text column of --queries [default: the text column the index was built from, else text].",
    id_help="Column of --queries copied to the hits as query_id [default: the index's input id column, if present].",
    keep=False,
    keep_text=False,
    format_help=None,
)
@click.option("--id", "by_id", default=None, help="More like this: search with the row of this id.")
@click.option("--nprobe", type=int, default=None, help="IVF lists to visit [default: tuned at build].")
@click.option("--ef-search", type=int, default=None, help="HNSW search breadth [default: tuned at build].")
@click.option("--exact", is_flag=True, help="Compare with every stored vector: the true top-k (slower; not for ivfpq).")
@click.option(
    "--where",
    default=None,
    help="Only rows whose stored columns match this SQL condition, e.g. \"section = 'games' AND year >= 2020\".",
)
@runtime_options(only=("device", "quiet"))
@trust_artefact_option
@click.option("--overwrite", is_flag=True, help="Replace an existing -o file.")
@wait_option
def search(
    index_dir,
    query,
    k,
    as_json,
    spec,
    output,
    by_id,
    nprobe,
    ef_search,
    exact,
    where,
    trust_remote_code,
    overwrite,
    wait,
    runtime,
):
    """Find the rows of INDEX_DIR most like QUERY (text embedded exactly as the index was), or like --id."""
    from ..errors import ConfigError
    from ..index import Index

    given = [name for name, value in (("QUERY", query), ("--queries", spec), ("--id", by_id)) if value is not None]
    if len(given) != 1:
        raise ConfigError(
            "give exactly one of QUERY, --queries FILE or --id X" + (f" (got {', '.join(given)})" if given else "")
        )
    if spec is not None and output is None:
        raise ConfigError("--queries needs -o OUT.parquet for the hits")
    idx = Index.load(index_dir, device=runtime.device, trust_remote_code=trust_remote_code)
    knobs = {"nprobe": nprobe, "ef_search": ef_search, "exact": exact, "where": where}
    if spec is not None:
        summary = idx.search_file(
            spec.path,
            output,
            k,
            text_column=spec.text_column,
            id_column=spec.id_column,
            overwrite=overwrite,
            wait=wait,
            progress=runtime.progress,
            **knobs,
        )
        for note in summary["notes"]:
            click.echo(f"note: {note}", err=True)
        skipped = f"; {summary['skipped']} empty or unreadable skipped" if summary["skipped"] else ""
        click.echo(
            f"{summary['searched']:,} of {summary['queries']:,} queries searched{skipped}; "
            f"{summary['hits']:,} hits -> {output}",
            err=True,
        )
        return
    result = idx.search_ids([by_id], k, **knobs) if by_id is not None else idx.search(query, k, **knobs)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    hits = result.hits(0)
    if as_json:
        click.echo(json.dumps({"query": query, "id": by_id, "metric": idx.metric, "hits": hits}, indent=2, default=str))
        return
    _print_table(hits, idx.stored_columns, idx.metric)


def _print_table(hits: list[dict], stored: list[str], metric: str) -> None:
    """One line per hit, every column padded to its widest cell (text cut to the terminal width)."""
    score_name = {"cosine": "cosine", "ip": "ip", "l2": "distance"}[metric]
    ids = [str(h["id"]) for h in hits]
    scores = [f"{h['score']:.4f}" for h in hits]
    id_width = max([2, *map(len, ids)])
    score_width = max([len(score_name), *map(len, scores)])
    fixed = 4 + 2 + score_width + 2 + id_width
    room = max(20, shutil.get_terminal_size((120, 20)).columns - fixed - 2 * len(stored))
    cells = [[" ".join(str(h.get(c, "")).split()) for c in stored] for h in hits]
    per = room // max(1, len(stored))
    cells = [[c if len(c) <= per else c[: per - 1] + "…" for c in row] for row in cells]
    widths = [max([len(name), *(len(row[j]) for row in cells)]) for j, name in enumerate(stored)]

    def line(rank: str, score: str, id_text: str, values: list[str]) -> str:
        padded = [v.ljust(w) for v, w in zip(values, widths)]
        return f"{rank:>4}  {score:>{score_width}}  {id_text:<{id_width}}{''.join(f'  {v}' for v in padded)}".rstrip()

    click.echo(line("rank", score_name, "id", stored))
    for h, score, id_text, row in zip(hits, scores, ids, cells):
        click.echo(line(str(h["rank"]), score, id_text, row))
