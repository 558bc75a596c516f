"""``embedkit cluster``."""

from __future__ import annotations

import click

from ..cluster import DEFAULT_K_RANGE, DEFAULT_MIN_CLUSTER_SIZE, DEFAULT_PCA, MAP_METHODS, METHODS
from . import cli, wait_option
from .embed import split_commas


@cli.command()
@click.argument("features", type=click.Path())  # a file or a sharded dataset directory
@click.option(
    "-o",
    "--output",
    "output_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Output directory (created; its parent must exist).",
)
@click.option(
    "--k",
    "k",
    default="auto",
    show_default=True,
    help="Number of clusters, or 'auto' (best silhouette over --k-range on a sample). Not used by hdbscan.",
)
@click.option(
    "--k-range",
    default=f"{DEFAULT_K_RANGE[0]}:{DEFAULT_K_RANGE[1]}",
    show_default=True,
    help="Candidates MIN:MAX for --k auto.",
)
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default="kmeans",
    show_default=True,
    help="minibatch-kmeans for very large data; hdbscan finds k itself and marks noise (-1).",
)
@click.option("--column", default=None, help="Embedding column [default: the only one].")
@click.option("--label-column", default=None, help="True labels: report NMI and ARI.")
@click.option(
    "--text-column", default=None, help="Texts for central examples and distinctive terms [default: 'text' if present]."
)
@click.option(
    "--keep",
    multiple=True,
    callback=split_commas,
    help="Columns copied into clusters.parquet (repeat or comma-separate).",
)
@click.option(
    "--no-standardize",
    is_flag=True,
    help="Do not scale dimensions to unit variance (GPT-2's rogue dimensions then dominate).",
)
@click.option("--no-center", is_flag=True, help="Do not subtract the mean (with --no-standardize).")
@click.option(
    "--no-normalize", is_flag=True, help="Do not L2-normalise rows (cluster by Euclidean distance, not direction)."
)
@click.option(
    "--pca",
    type=click.IntRange(min=0),
    default=DEFAULT_PCA,
    show_default=True,
    help="PCA components before clustering (0 = none).",
)
@click.option(
    "--min-cluster-size",
    type=click.IntRange(min=2),
    default=DEFAULT_MIN_CLUSTER_SIZE,
    show_default=True,
    help="hdbscan: smallest cluster.",
)
@click.option(
    "--map",
    "map_method",
    type=click.Choice(MAP_METHODS),
    default="pca",
    show_default=True,
    help="2-D map projection (umap needs umap-learn).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace a finished clustering in the output directory (kept whole until the new one is complete).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of a table.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no table.")
@wait_option
def cluster(
    features,
    output_dir,
    k,
    k_range,
    method,
    column,
    label_column,
    text_column,
    keep,
    no_standardize,
    no_center,
    no_normalize,
    pca,
    min_cluster_size,
    map_method,
    seed,
    overwrite,
    as_json,
    quiet,
    wait,
):
    """Cluster the vectors of a FEATURES file; write clusters.parquet, map.png and summary.json to -o."""
    import json

    from ..cluster import ClusterOptions, cluster_file, parse_k_range
    from ..summary import summary_text

    options = ClusterOptions(
        method=method,
        k=k,
        k_range=parse_k_range(k_range),
        standardize=not no_standardize,
        center=not no_center,
        normalize=not no_normalize,
        pca=pca,
        min_cluster_size=min_cluster_size,
        seed=seed,
        map=map_method,
    )
    result = cluster_file(
        features,
        output_dir,
        options,
        column=column,
        label_column=label_column,
        text_column=text_column,
        keep=keep,
        overwrite=overwrite,
        progress=not quiet,
        wait=wait,
    )
    summary = result.summary
    if as_json:
        click.echo(json.dumps(summary, indent=2, ensure_ascii=False, default=str))
    elif not quiet:
        click.echo(summary_text(result))
    files = [v for v in summary["files"].values() if isinstance(v, str)]
    # result.output_dir is a Path: `-o clusters/` prints "clusters/", not "clusters//".
    click.echo(
        f"wrote {result.output_dir}/ ({', '.join(files)}, summary.json) in {summary['timings']['total_s']:.1f}s",
        err=True,
    )
