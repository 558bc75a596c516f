"""``embedkit samples``: write the shipped sample files (the README's quick start runs on them)."""

from __future__ import annotations

import click

from ..summary import summary_text
from . import cli, wait_option


@cli.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace sample files already in DIRECTORY.")
@wait_option
def samples(directory, overwrite, wait):
    """Write small sample files (reviews, support tickets, help articles, questions, a pipeline) into DIRECTORY.

    The texts were written for embedkit; the README's quick start uses them. DIRECTORY defaults to the current
    one and is created if missing; files already there are refused unless --overwrite.
    """
    from ..samples import write_samples

    click.echo(summary_text(write_samples(directory, overwrite=overwrite, wait=wait)))
