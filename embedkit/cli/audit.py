"""``embedkit audit``."""

from __future__ import annotations

import click

from ..audit.groups import DEFAULT_GROUP_PERMUTATIONS
from ..audit.weat import DEFAULT_BOOTSTRAP, DEFAULT_PERMUTATIONS
from ..summary import summary_text
from . import cli, runtime_options, wait_option
from .embed import make_config, split_commas


@cli.command()
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Report directory to write.")
@click.option(
    "--model", "-m", default=None, help="Hub id or local directory [default: $EMBEDKIT_MODEL or openai-community/gpt2]."
)
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit).")
@click.option(
    "--layers",
    "-l",
    multiple=True,
    callback=split_commas,
    help="'all' (0 = embeddings .. last block) or indices such as 0,6,-1 [default: all].",
)
@click.option(
    "--pooling",
    "-p",
    multiple=True,
    callback=split_commas,
    help="mean, last, max, first, weighted-mean (repeat or comma-separate) [default: mean].",
)
@click.option(
    "--tests",
    "tests_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML file of [[test]] tables (name, x, y, a, b, templates) [default: the built-in gender, race and "
    "religion sets].",
)
@click.option(
    "--permutations",
    type=click.IntRange(min=100),
    default=None,
    help=f"Random re-splits per test when the exact test is too large [default: {DEFAULT_PERMUTATIONS:,}; "
    f"with --features: {DEFAULT_GROUP_PERMUTATIONS:,} relabellings].",
)
@click.option(
    "--bootstrap",
    type=click.IntRange(min=0),
    default=DEFAULT_BOOTSTRAP,
    show_default=True,
    help="Resamples for the 95% interval of the effect size (0 = none).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the permutations, bootstrap and probe folds."
)
@click.option(
    "--random-control",
    is_flag=True,
    help="Also run every test on the same architecture with random weights (a second pass): what surface "
    "form alone produces, reported next to each result.",
)
@click.option(
    "--features",
    type=click.Path(dir_okay=False),
    default=None,
    help="Instead of word tests: how far apart the groups of --group-column lie in this features file.",
)
@click.option("--group-column", default=None, help="With --features: the column naming each row's group.")
@click.option(
    "--column",
    "columns",
    multiple=True,
    callback=split_commas,
    help="With --features: embedding column(s) to audit [default: every one].",
)
@click.option(
    "--cv",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="With --features: folds of the linear probe that predicts the group.",
)
@click.option("--trust-remote-code", is_flag=True, help="Allow the model's own Python code to run.")
@runtime_options
@click.option("--overwrite", is_flag=True, help="Replace an existing audit report.")
@wait_option
def audit(
    output,
    model,
    revision,
    layers,
    pooling,
    tests_file,
    permutations,
    bootstrap,
    seed,
    random_control,
    features,
    group_column,
    columns,
    cv,
    trust_remote_code,
    runtime,
    overwrite,
    wait,
):
    """Measure social bias in a model's features, layer by layer (WEAT on sentence templates), or group separation.

    With --model: association tests (effect size d, permutation p-value, bootstrap interval) for every layer x
    pooling from one forward pass. With --features F --group-column COL: centroid distances, a permutation test
    and a linear probe of the groups in F. Writes audit.html (read this first), audit.json and tables.
    """
    from ..audit import audit_features, audit_model

    if features is not None:
        used = [
            name
            for name, value in (
                ("--model", model),
                ("--revision", revision),
                ("--layers", layers),
                ("--pooling", pooling),
                ("--tests", tests_file),
                ("--random-control", random_control),
            )
            if value
        ]
        if used:
            raise click.UsageError(
                f"{', '.join(used)} cannot be combined with --features (its vectors are already made)"
            )
        if not group_column:
            raise click.UsageError("--features needs --group-column")
        result = audit_features(
            features,
            group_column,
            output,
            columns=columns or None,
            permutations=permutations or DEFAULT_GROUP_PERMUTATIONS,
            cv=cv,
            seed=seed,
            overwrite=overwrite,
            wait=wait,
        )
    else:
        if group_column or columns:
            raise click.UsageError("--group-column and --column need --features")
        config = make_config(model, revision, (), pooling, None, "truncate", None, trust_remote_code=trust_remote_code)
        result = audit_model(
            output,
            config,
            layers=layers or "all",
            tests=tests_file,
            permutations=permutations or DEFAULT_PERMUTATIONS,
            bootstrap=bootstrap,
            seed=seed,
            runtime=runtime,
            overwrite=overwrite,
            wait=wait,
            control=random_control,
        )
    click.echo(summary_text(result))
