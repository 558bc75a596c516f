"""``embedkit run``: declarative pipelines."""

from __future__ import annotations

import click

from . import cli, quiet_libraries


@cli.command("run")
@click.argument("pipeline_file", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Rerun every stage, even those whose inputs and settings are unchanged.")
@click.option(
    "--model", "-m", default=None, help="Model for this run (overrides the file's [extract] model and $EMBEDKIT_MODEL)."
)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where outputs go [default: the file's output_dir, else embedkit-out/NAME].",
)
@click.option(
    "--trust-remote-code",
    is_flag=True,
    help="Allow the model's own Python code to run in every stage (the file's own setting is ignored).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def run(pipeline_file, force, model, output_dir, trust_remote_code, quiet):
    """Run a pipeline file: embed its source, then its stages (train, predict, cluster, index, search, probe).

    Stages whose inputs and settings are unchanged since the last run are skipped.
    """
    from ..pipeline import run_pipeline

    verbose = bool((click.get_current_context().find_root().obj or {}).get("verbose"))
    quiet_libraries(quiet or not verbose)  # transformers' own bars only with -v: one bar per step is ours
    outcomes = run_pipeline(
        pipeline_file,
        force=force,
        model=model,
        output_dir=output_dir,
        progress=not quiet,
        echo=lambda line: click.echo(line, err=True),
        trust_remote_code=trust_remote_code,
    )
    ran = sum(o.ran for o in outcomes)
    click.echo(
        f"{ran} stage(s) ran, {len(outcomes) - ran} skipped; outputs in {outcomes[0].outputs[0].parent}", err=True
    )
