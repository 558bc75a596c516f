"""``embedkit probe``."""

from __future__ import annotations

import click

from ..probe import ALL_LAYERS, DEFAULT_CV, DEFAULT_METRIC, DEFAULT_POOLINGS, METRICS
from ..summary import summary_text
from . import cli, input_options, runtime_options, split_commas, wait_option
from .embed import make_config, vector_options


@cli.command()
@click.argument("input", metavar="INPUT")
@click.option("--label-column", "-y", required=True, help="Column holding the classes.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Report directory to write.")
@input_options(id_help="Column used as `id` in saved features [default: the row number].", keep=False, keep_text=True)
@click.option(
    "--layers",
    "-l",
    multiple=True,
    callback=split_commas,
    default=(ALL_LAYERS,),
    show_default=True,
    help="'all' (0 = embeddings .. last block) or indices such as 0,3,6,-1 (repeat or comma-separate).",
)
@click.option(
    "--pooling",
    "-p",
    multiple=True,
    callback=split_commas,
    default=DEFAULT_POOLINGS,
    show_default=True,
    help="Pooling modes to compare: mean, last, max, first, weighted-mean (repeat or comma-separate).",
)
@click.option(
    "--cv",
    type=click.IntRange(min=2),
    default=DEFAULT_CV,
    show_default=True,
    help="Stratified folds of the linear probe.",
)
@click.option(
    "--sample", type=click.IntRange(min=2), default=None, help="Probe a seeded stratified sample of this many rows."
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the sample, the folds and the classifier."
)
@click.option("--nmi", is_flag=True, help="Also score each pair by the NMI of a k-means clustering (k = classes).")
@click.option(
    "--metric", type=click.Choice(METRICS), default=DEFAULT_METRIC, show_default=True, help="What picks the best pair."
)
@click.option(
    "--save-features",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also keep the collected features as this Parquet file.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing report (and --save-features file).")
@wait_option
@vector_options
@runtime_options
def probe(
    spec,
    label_column,
    output,
    layers,
    pooling,
    cv,
    sample,
    seed,
    nmi,
    metric,
    save_features,
    overwrite,
    wait,
    runtime,
    **vector,
):
    """Find the layer and pooling whose features suit a labelled task best, from ONE forward pass over INPUT.

    Every (layer, pooling) pair is scored by the cross-validated linear probe of `embedkit train --cv K --C 1
    --standardize` (one fixed C for every layer); the report directory gets probe.csv, probe.png and probe.json,
    with the `embedkit embed` command for the best pair.
    """
    from ..probe import probe_file

    config = make_config(layers=(), pooling=pooling, **vector)  # --layers: probe_file's own choice of layers
    result = probe_file(
        spec,
        label_column,
        output,
        config,
        runtime,
        layers=layers,
        cv=cv,
        sample=sample,
        seed=seed,
        nmi=nmi,
        metric=metric,
        save_features=save_features,
        overwrite=overwrite,
        wait=wait,
    )
    click.echo(summary_text(result))
