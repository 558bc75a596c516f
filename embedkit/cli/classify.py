"""``embedkit train`` and ``embedkit predict``."""

from __future__ import annotations

import click

from ..classify import CLASS_WEIGHTS, CLASSIFIERS, DEFAULT_CLASSIFIER, DEFAULT_TEST_SIZE, KNN_METRICS, KNN_WEIGHTS
from ..summary import summary_text
from . import cli, input_options, runtime_options, trust_artefact_option, wait_option


@cli.command()
@click.argument("features", type=click.Path())  # a file or a sharded dataset directory
@click.option("--label-column", "-y", required=True, help="Column holding the classes.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Model directory to write.")
@click.option("--classifier", "-c", type=click.Choice(CLASSIFIERS), default=DEFAULT_CLASSIFIER, show_default=True)
@click.option("--column", default=None, help="Embedding column to train on [default: the only one].")
@click.option(
    "--cv",
    type=click.IntRange(min=2),
    default=None,
    help="Stratified K-fold cross-validation instead of a hold-out; the saved model is fitted on every row.",
)
@click.option(
    "--test-size",
    type=click.FloatRange(0, 1, max_open=True),
    default=DEFAULT_TEST_SIZE,
    show_default=True,
    help="Stratified hold-out fraction (0: no evaluation, fit on every row).",
)
@click.option(
    "--refit/--no-refit",
    default=True,
    show_default=True,
    help="After the hold-out evaluation, fit the saved model again on every row with the chosen settings; "
    "--no-refit saves the evaluated fit (trained on the other rows only).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split and of the classifiers.")
@click.option(
    "--C",
    "C",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Inverse regularisation (logreg, linear-svm [1]). Unset, logreg chooses C over 1e-4..100 and the scaler "
    "on/off by 3-fold CV log-loss on the training rows (shown in the summary and metrics.json); set, nothing is "
    "searched.",
)
@click.option(
    "--alpha",
    type=click.FloatRange(min=0),
    default=None,
    help="L2 penalty (ridge [chosen by leave-one-out over 0.01..10,000], mlp [1e-4]).",
)
@click.option("--k-neighbors", type=click.IntRange(min=1), default=5, show_default=True, help="Neighbours (knn).")
@click.option("--knn-metric", type=click.Choice(KNN_METRICS), default="cosine", show_default=True)
@click.option("--knn-weights", type=click.Choice(KNN_WEIGHTS), default="distance", show_default=True)
@click.option("--hidden-size", type=click.IntRange(min=1), default=256, show_default=True, help="Hidden units (mlp).")
@click.option(
    "--max-iter",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Optimiser iterations (logreg, linear-svm, mlp).",
)
@click.option(
    "--class-weight",
    type=click.Choice(CLASS_WEIGHTS),
    default="none",
    show_default=True,
    help="'balanced' reweights rare classes (logreg, linear-svm, ridge).",
)
@click.option(
    "--standardize/--no-standardize",
    default=None,
    help="Scale every dimension to zero mean and unit variance first (default: on; logreg without --C tries both).",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace an existing model directory (kept whole until the new one is complete)."
)
@click.option(
    "--group-column",
    default=None,
    help="Also report accuracy and error rates per group of this column (e.g. a demographic attribute).",
)
@wait_option
def train(
    features,
    label_column,
    output,
    classifier,
    column,
    cv,
    test_size,
    refit,
    seed,
    C,
    alpha,
    k_neighbors,
    knn_metric,
    knn_weights,
    hidden_size,
    max_iter,
    class_weight,
    standardize,
    overwrite,
    group_column,
    wait,
):
    """Train a classifier on the vectors of a FEATURES Parquet; write metrics, a confusion matrix and the model."""
    from ..classify import ClassifierOptions
    from ..classify import train as train_model

    options = ClassifierOptions(
        C=C,
        alpha=alpha,
        k_neighbors=k_neighbors,
        knn_metric=knn_metric,
        knn_weights=knn_weights,
        hidden_size=hidden_size,
        max_iter=max_iter,
        class_weight=class_weight,
        standardize=standardize,
    )
    result = train_model(
        features,
        label_column,
        output,
        classifier=classifier,
        options=options,
        column=column,
        cv=cv,
        test_size=test_size,
        seed=seed,
        refit=refit,
        overwrite=overwrite,
        wait=wait,
        group_column=group_column,
    )
    click.echo(summary_text(result))


@cli.command()
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.argument("input", metavar="INPUT")
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output file: .parquet, .csv or .jsonl."
)
@input_options(
    text_default=None,
    text_help="Column holding the text (raw-text input) [default: the one the model's training text came from].",
    id_help="Column passed through as `id` (raw-text input) [default: the training data's id column if the input "
    "has it, else the row number].",
    keep_text=False,
    format_help="Raw-text input format [default: from the extension].",
)
@click.option(
    "--column", default=None, help="Embedding column to use (features input) [default: the one matching the model]."
)
@runtime_options
@trust_artefact_option
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@wait_option
def predict(model_dir, spec, output, column, runtime, trust_remote_code, overwrite, wait):
    """Classify INPUT with the model in MODEL_DIR.

    INPUT is raw text (CSV, TSV, JSONL, Parquet or TXT; embedded with the model's stored settings) or a features
    Parquet from `embedkit embed` (which must have been embedded with those same settings).
    """
    from ..classify import predict_file

    summary = predict_file(
        model_dir,
        spec,
        output,
        runtime,
        column=column,
        overwrite=overwrite,
        wait=wait,
        trust_remote_code=trust_remote_code,
    )
    click.echo(summary_text(summary), err=True)
