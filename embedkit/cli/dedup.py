"""``embedkit dedup``."""

from __future__ import annotations

import json

import click

from ..dedup import DEFAULT_THRESHOLD, KEEP_RULES, SEARCHES
from . import cli, wait_option


@cli.command()
@click.argument("features", type=click.Path())  # a file or a sharded dataset directory
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .parquet file.")
@click.option(
    "--threshold",
    type=float,
    default=DEFAULT_THRESHOLD,
    show_default=True,
    help="Cosine similarity in (0, 1] at or above which two rows are near-duplicates.",
)
@click.option("--column", default=None, help="Embedding column [default: the only one].")
@click.option(
    "--text-column",
    default=None,
    help="Texts hashed for exact copies and compared by --keep-rule longest [default: 'text' if present].",
)
@click.option(
    "--keep-rule",
    type=click.Choice(KEEP_RULES),
    default="first",
    show_default=True,
    help="Which row of a group keeps keep=true (a row with a vector always wins over one without).",
)
@click.option(
    "--search",
    type=click.Choice(SEARCHES),
    default="exact",
    show_default=True,
    help="exact finds every pair (time grows with rows squared); hnsw looks at 32 approximate neighbours per row: "
    "for large files, may miss pairs.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@wait_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing on success.")
def dedup(features, output, threshold, column, text_column, keep_rule, search, overwrite, wait, as_json, quiet):
    """Find exact and near-duplicate rows of FEATURES; write every row with dup_group, dup_status and keep columns."""
    from dataclasses import asdict

    from ..dedup import dedup_file

    result = dedup_file(
        features,
        output,
        threshold=threshold,
        column=column,
        text_column=text_column,
        keep_rule=keep_rule,
        search=search,
        overwrite=overwrite,
        wait=wait,
    )
    if as_json:
        click.echo(json.dumps(asdict(result), indent=2, ensure_ascii=False, default=str))
    elif not quiet:
        for line in result.summary_lines():
            click.echo(line)
