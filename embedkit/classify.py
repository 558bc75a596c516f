"""The classify stage: train a classifier on stored features, evaluate it, save it safely, predict with it.

A model directory holds::

    model.skops             the fitted scikit-learn pipeline (skops format: loading it runs no code)
    metrics.json            accuracy, macro-F1, per-class report, confusion matrix, counts, settings
    confusion_matrix.png    the evaluation's confusion matrix
    eval_predictions.parquet  id, true label, predicted label (and fold) of every evaluated row
    embedkit_model.json     the manifest, written LAST: classifier, classes, label column, the extraction
                            settings of the training vectors, the sha256 and size of every file, versions

The directory is written by the artefact protocol (:mod:`embedkit.artefact`): under a lock, built aside and
switched in whole, so a reader sees the old model or the new one, never a mix. Loading verifies every file
against the manifest and every manifest field before use. Because the manifest holds the exact extraction
settings, ``predict`` embeds raw text the way the training data was embedded.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import artefact
from .config import ExtractConfig
from .errors import ConfigError, IncompatibleError, InputError, OutputError, choice_error
from .sources import parquet_batches
from .store import Features, is_features_file, library_versions, matrix_from_arrow, open_features

log = logging.getLogger(__name__)

CLASSIFIERS = ("logreg", "linear-svm", "knn", "ridge", "mlp")
DEFAULT_CLASSIFIER = "logreg"
KNN_METRICS = ("cosine", "euclidean", "manhattan")
KNN_WEIGHTS = ("uniform", "distance")
CLASS_WEIGHTS = ("none", "balanced")
OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}

MANIFEST = "embedkit_model.json"
MODEL_FILE = "model.skops"
METRICS_FILE = "metrics.json"
CONFUSION_PNG = "confusion_matrix.png"
EVAL_PREDICTIONS = "eval_predictions.parquet"
MODEL_KIND = "embedkit-classifier"
# 2: the manifest lists every file as {sha256, bytes} (the artefact protocol); 1 listed bare sha256 strings.
MODEL_FORMAT_VERSION = 2
LABEL_TYPES = ("int", "bool", "str")
NON_FINITE_STATUS = "non_finite"  # predict's status of a row whose stored vector holds NaN or infinity
DEFAULT_TEST_SIZE = 0.2

# skops trusts scikit-learn's estimators, numpy and builtins by itself. These are the only other types our
# pipelines contain (the MLP keeps its optimizer state). Anything else in a model file is refused on load.
TRUSTED_EXTRA_TYPES = (
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
)

# The MLP's early stopping holds out 10% of the training rows (stratified); below this many training rows per
# class that hold-out is too small to be stratified or meaningful, so the MLP trains for max_iter instead.
MLP_EARLY_STOPPING_MIN_PER_CLASS = 20

# More distinct labels than half the rows means the column named is free text or an id, not classes; below this
# many rows a tiny hand-made set could legitimately look like that.
LABELS_LIKE_TEXT_MIN_ROWS = 20
# Ridge's penalty when none is given is chosen by leave-one-out over this grid (closed form: one decomposition,
# not one fit per value). A fixed alpha=1 barely regularises hundreds of standardised dimensions, often more
# than the rows: 320 fortunes x 384 MiniLM dims scored 0.63 hold-out accuracy at alpha=1, 0.83 at alpha=100,
# and leave-one-out picked ~300.
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-2, 4, 13))
# Logistic regression's C, when none is given, is chosen with the scaler on and off by stratified K-fold CV
# accuracy on the training rows over this grid. A fixed StandardScaler + C=1 overfits hundreds of dimensions:
# on normalised MiniLM vectors of 12 fortune categories it scored 0.675 against 0.718 for the best C by hand.
# Half-decades from 1e-4: standardised sentence vectors often score best at C <= 0.01 (man-page summaries by
# section: 0.678 held-out at C=0.01, the old grid's edge, against 0.615 at C=1), unscaled ones near C=1..10.
LOGREG_CS = tuple(float(c) for c in np.logspace(-4, 2, 13))
# 5 folds, not 3: on ~1,000 training rows 3-fold scores ranked the scaler wrongly (man pages: 0.609 scaled vs
# 0.610 unscaled at 3 folds, 0.635 vs 0.626 at 5, where the held-out rows gave 0.678 vs 0.678/0.657).
LOGREG_SEARCH_FOLDS = 5
# The search runs on a stratified sample of at most this many training rows, then the chosen settings are fitted
# on every training row: this bounds its cost on large sets, and a C chosen on 2,000 rows ranks the grid as one
# chosen on more does for linear models.
LOGREG_SEARCH_MAX_ROWS = 2_000
# Each fold walks the grid from the smallest C up, every fit starting from the previous solution (warm start),
# and the walk stops once the mean CV accuracy has risen above its start and then not beaten its best for this many
# steps: the large-C fits, slow to converge on nearly separable data, are skipped once they can only overfit more.
LOGREG_SEARCH_PATIENCE = 2
DEFAULT_C = 1.0  # linear-svm's C when none is given (scikit-learn has no CV variant of LinearSVC)


# ---------------------------------------------------------------------------------------------- classifiers


@dataclass(frozen=True)
class ClassifierOptions:
    """Tuning knobs; each classifier reads the ones that apply to it.

    Attributes:
        C: inverse regularisation strength (logreg, linear-svm); larger fits the training data more closely.
            None = logreg chooses it by cross-validation (``search_logreg``), linear-svm uses ``DEFAULT_C``.
        alpha: L2 penalty (ridge, mlp); None = ridge picks it by leave-one-out over ``RIDGE_ALPHAS``, mlp uses 1e-4.
        k_neighbors: neighbours voting (knn).
        knn_metric: distance for knn (cosine suits hidden states, whose norms vary with text length).
        knn_weights: ``distance`` lets closer neighbours count more (knn).
        hidden_size: units of the MLP's single hidden layer.
        max_iter: optimiser iterations (logreg, linear-svm, mlp).
        class_weight: ``balanced`` reweights rare classes (logreg, linear-svm, ridge).
        standardize: scale every dimension to zero mean, unit variance first. Transformer hidden states have a
            few dimensions with huge magnitudes (GPT-2 especially) that otherwise dominate every linear model
            and distance, so it is on by default for every classifier but logreg; there None (the default) lets
            the cross-validation of ``C`` decide, since normalised sentence vectors often do better unscaled.
    """

    C: float | None = None
    alpha: float | None = None
    k_neighbors: int = 5
    knn_metric: str = "cosine"
    knn_weights: str = "distance"
    hidden_size: int = 256
    max_iter: int = 1000
    class_weight: str = "none"
    standardize: bool | None = None

    def __post_init__(self) -> None:
        if self.C is not None and self.C <= 0:
            raise ConfigError(f"C must be positive, got {self.C}")
        if self.alpha is not None and self.alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {self.alpha}")
        if self.k_neighbors < 1:
            raise ConfigError(f"k-neighbors must be at least 1, got {self.k_neighbors}")
        if self.hidden_size < 1:
            raise ConfigError(f"hidden-size must be at least 1, got {self.hidden_size}")
        if self.max_iter < 1:
            raise ConfigError(f"max-iter must be at least 1, got {self.max_iter}")
        if self.knn_metric not in KNN_METRICS:
            raise choice_error("knn metric", self.knn_metric, KNN_METRICS)
        if self.knn_weights not in KNN_WEIGHTS:
            raise choice_error("knn weights", self.knn_weights, KNN_WEIGHTS)
        if self.class_weight not in CLASS_WEIGHTS:
            raise choice_error("class weight", self.class_weight, CLASS_WEIGHTS)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def searches(self, classifier: str) -> bool:
        """Whether ``classifier`` chooses its settings by cross-validation with these options."""
        return classifier == "logreg" and self.C is None


def search_logreg(X: np.ndarray, y: np.ndarray, options: ClassifierOptions, *, seed: int = 0) -> dict[str, Any]:
    """Choose logistic regression's C (and, unless fixed, the scaler) by stratified K-fold CV accuracy.

    For every setting of the scaler, each fold fits the grid ``LOGREG_CS`` as one warm-started regularisation path
    (lbfgs, each C starting from the previous solution, converged to the usual tolerance within ``max_iter``),
    stopping ``LOGREG_SEARCH_PATIENCE`` steps after the best mean accuracy. The scaler is fitted on the searched
    rows before the folds are cut; it sees no label, so that leaks nothing the choice could overfit. Ties go to the
    smaller C (stronger regularisation), then to the scaler on.

    Returns the grid, the mean CV accuracy of every (scaler, C) (None past where the path stopped), the chosen
    pair, its score, the rows searched and the seconds taken; ``train`` records it in metrics.json and the model
    manifest.
    """
    from sklearn.model_selection import StratifiedKFold, train_test_split
    from sklearn.preprocessing import StandardScaler

    started = time.perf_counter()
    rows = np.arange(len(y))
    if len(y) > LOGREG_SEARCH_MAX_ROWS:
        rows, _ = train_test_split(rows, train_size=LOGREG_SEARCH_MAX_ROWS, stratify=y, random_state=seed)
    Xs, ys = X[rows], y[rows]
    folds = min(LOGREG_SEARCH_FOLDS, _min_count(ys))
    if folds < 2:
        raise InputError(
            "choosing C by cross-validation needs at least 2 rows per class in the training rows; pass --C to fix it"
        )
    splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(Xs, ys))
    settings = [True, False] if options.standardize is None else [options.standardize]
    scores: dict[str, list[float | None]] = {}
    for standardize in settings:
        Xf = StandardScaler().fit_transform(Xs) if standardize else Xs
        scores["scaled" if standardize else "unscaled"] = _path_scores(Xf, ys, splits, options, seed)
    best = max(  # highest accuracy; among equals the smallest C (-i), then the scaler on (True > False)
        (score, -i, standardize)
        for standardize in settings
        for i, score in enumerate(scores["scaled" if standardize else "unscaled"])
        if score is not None
    )
    return {
        "grid_C": list(LOGREG_CS),
        "grid_standardize": settings,
        "folds": folds,
        "rows": int(len(ys)),
        "cv_accuracy": scores,
        "chosen_C": LOGREG_CS[-best[1]],
        "chosen_standardize": best[2],
        "chosen_cv_accuracy": best[0],
        "seconds": round(time.perf_counter() - started, 3),
    }


def _path_scores(X: np.ndarray, y: np.ndarray, splits: list, options: ClassifierOptions, seed: int) -> list:
    """Mean CV accuracy at every C of ``LOGREG_CS`` along warm-started paths (None for the Cs never reached)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    class_weight = None if options.class_weight == "none" else options.class_weight
    models = [
        LogisticRegression(warm_start=True, max_iter=options.max_iter, class_weight=class_weight, random_state=seed)
        for _ in splits
    ]
    scores: list[float] = []
    best, since_best = -1.0, 0
    with warnings.catch_warnings():
        # A large-C fit that stops at max_iter still ranks the grid; the saved model's own fit warns as usual.
        warnings.simplefilter("ignore", ConvergenceWarning)
        for C in LOGREG_CS:
            accuracy = [m.set_params(C=C).fit(X[tr], y[tr]).score(X[te], y[te]) for m, (tr, te) in zip(models, splits)]
            score = float(np.mean(accuracy))
            scores.append(score)
            if score > best:
                best, since_best = score, 0
            elif best > scores[0]:  # counted only past a peak: the small-C end is often a flat majority-class run
                since_best += 1
            if since_best >= LOGREG_SEARCH_PATIENCE:
                break
    return [*scores, *[None] * (len(LOGREG_CS) - len(scores))]


def settled(options: ClassifierOptions, search: dict[str, Any] | None) -> ClassifierOptions:
    """``options`` with the settings a search chose fixed, so a later fit repeats them instead of searching."""
    if search is None:
        return options
    return replace(options, C=search["chosen_C"], standardize=search["chosen_standardize"])


def fit_classifier(
    X: np.ndarray, y: np.ndarray, classifier: str, options: ClassifierOptions, *, seed: int = 0
) -> tuple[Any, dict[str, Any] | None]:
    """Fit ``classifier`` on ``X, y``, first choosing its settings by CV when ``options`` leave them open.

    Returns the fitted pipeline and the search record (None when nothing was searched).
    """
    search = None
    if options.searches(classifier) and _min_count(y) < 2:
        # No stratified fold can hold a class of one row: train keeps accepting such data (--test-size 0) with
        # the fixed defaults, and says so, rather than refusing what it fitted before.
        log.warning("a class has a single training row: C is not searched; using C=%g, standardised", DEFAULT_C)
        options = replace(options, C=DEFAULT_C, standardize=options.standardize is not False)
    elif options.searches(classifier):
        search = search_logreg(X, y, options, seed=seed)
        options = settled(options, search)
    estimator = build_classifier(classifier, options, seed=seed, min_class_rows=_min_count(y)).fit(X, y)
    return estimator, search


def build_classifier(
    name: str, options: ClassifierOptions | None = None, *, seed: int = 0, min_class_rows: int | None = None
):
    """An unfitted scikit-learn pipeline: optional StandardScaler, then the named classifier.

    Args:
        name: one of ``CLASSIFIERS``.
        options: tuning knobs (defaults when None).
        seed: random state of the classifiers that have one.
        min_class_rows: rows of the smallest class in the data it will be fitted on (decides MLP early stopping).
    """
    from sklearn.linear_model import LogisticRegression, RidgeClassifier, RidgeClassifierCV
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    o = options or ClassifierOptions()
    C = DEFAULT_C if o.C is None else o.C  # a logreg that searches is built by fit_classifier with the chosen C
    class_weight = None if o.class_weight == "none" else o.class_weight
    if name == "logreg":
        model = LogisticRegression(C=C, max_iter=o.max_iter, class_weight=class_weight, random_state=seed)
    elif name == "linear-svm":
        model = LinearSVC(C=C, max_iter=o.max_iter, class_weight=class_weight, random_state=seed)
    elif name == "knn":
        model = KNeighborsClassifier(n_neighbors=o.k_neighbors, metric=o.knn_metric, weights=o.knn_weights)
    elif name == "ridge" and o.alpha is None:
        model = RidgeClassifierCV(alphas=RIDGE_ALPHAS, class_weight=class_weight)
    elif name == "ridge":
        model = RidgeClassifier(alpha=o.alpha, class_weight=class_weight)
    elif name == "mlp":
        early = min_class_rows is not None and min_class_rows >= MLP_EARLY_STOPPING_MIN_PER_CLASS
        model = MLPClassifier(
            hidden_layer_sizes=(o.hidden_size,),
            alpha=1e-4 if o.alpha is None else o.alpha,
            max_iter=o.max_iter,
            early_stopping=early,
            random_state=seed,
        )
    else:
        raise choice_error("classifier", name, CLASSIFIERS)
    steps = ([("scale", StandardScaler())] if o.standardize is not False else []) + [("classify", model)]
    return Pipeline(steps)


# ---------------------------------------------------------------------------------------------- data


@dataclass
class TrainingData:
    """Vectors and labels ready to fit, with what was skipped on the way."""

    X: np.ndarray
    y: np.ndarray
    ids: pa.Array
    features: Features
    column: str
    skipped_null_embeddings: int = 0
    skipped_null_labels: int = 0
    skipped_non_finite: int = 0
    groups: np.ndarray | None = None  # one group label per row of X (``--group-column``), for per-group metrics

    @property
    def class_counts(self) -> dict[Any, int]:
        counts = Counter(self.y.tolist())
        return {label: counts[label] for label in sorted(counts)}


def _labels_array(values: pa.ChunkedArray, column: str) -> np.ndarray:
    """Labels as a numpy array of one kind: integers stay integers, anything else becomes text."""
    typ = values.type
    if pa.types.is_integer(typ) or pa.types.is_boolean(typ):
        return np.asarray(values.to_pylist(), dtype=np.int64 if pa.types.is_integer(typ) else bool)
    if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_dictionary(typ):
        return np.asarray([str(v) for v in values.to_pylist()], dtype=str)
    if pa.types.is_floating(typ):
        floats = values.to_numpy(zero_copy_only=False)
        if np.all(floats == np.round(floats)):  # 0.0/1.0 labels written by pandas with NaNs elsewhere
            return floats.astype(np.int64)
        raise InputError(f"label column {column!r} holds non-integer numbers ({typ}); a classifier needs categories")
    log.warning("label column %r has type %s; using its text form as the class", column, typ)
    return np.asarray(
        [json.dumps(v, default=str) if not isinstance(v, str) else v for v in values.to_pylist()], dtype=str
    )


def _group_values(values: pa.ChunkedArray) -> np.ndarray:
    # Groups are categories shown by name; a missing value is a group of its own, never silently dropped.
    return np.array(["(missing)" if v is None else str(v) for v in values.to_pylist()], dtype=object)


def load_training_data(
    features: str | Path | Features, label_column: str, column: str | None = None, group_column: str | None = None
) -> TrainingData:
    """Read one embedding column and the labels, skipping rows with a null embedding or a null label.

    Rows whose vector holds NaN or infinity are skipped and counted too, as the cluster stage does: the embed stage
    never writes them, so they come from a damaged or hand-made file, and one such row must not stop a fit that
    every other row supports (scikit-learn refuses the whole matrix otherwise).
    """
    feats = features if isinstance(features, Features) else open_features(features)
    if column is None and len(feats.embedding_columns) > 1:  # the CLI and the API name the choice differently
        raise InputError(
            f"{feats.path} has several embedding columns; pick one with --column (column= in Python): "
            + ", ".join(feats.embedding_columns)
        )
    column = feats.embedding_column(column)
    if label_column not in feats.schema.names:
        raise InputError(
            f"{feats.path}: label column {label_column!r} not found; columns: {', '.join(feats.schema.names)}"
        )
    if label_column == column or label_column.startswith("embedding"):
        raise ConfigError(f"label column {label_column!r} is an embedding column; name the column holding the classes")
    if group_column is not None:
        feats.require_columns([group_column])
    X, table, null_embeddings = feats.load(column, extra=[label_column, *([group_column] if group_column else [])])
    labels = table.column(label_column)
    present = pc.is_valid(labels)
    if pa.types.is_floating(labels.type):
        present = pc.and_(present, pc.invert(pc.is_nan(labels)))
    if pa.types.is_string(labels.type) or pa.types.is_large_string(labels.type):
        present = pc.and_(present, pc.not_equal(pc.utf8_trim_whitespace(labels), ""))
    present_np = np.asarray(present.to_pylist(), dtype=bool)
    null_labels = int((~present_np).sum())
    finite = np.isfinite(X).all(axis=1) if X.size else np.ones(len(X), dtype=bool)
    non_finite = int((present_np & ~finite).sum())  # a row missing its label is counted once, as a missing label
    usable = present_np & finite
    kept = table.filter(pa.array(usable))
    data = TrainingData(
        X=X[usable],
        y=_labels_array(kept.column(label_column), label_column),
        ids=kept.column("id").combine_chunks(),
        features=feats,
        column=column,
        skipped_null_embeddings=null_embeddings,
        skipped_null_labels=null_labels,
        skipped_non_finite=non_finite,
        groups=_group_values(kept.column(group_column)) if group_column else None,
    )
    if null_embeddings:
        log.info("skipped %d row(s) with a null embedding (rows the embed stage could not embed)", null_embeddings)
    if null_labels:
        log.info("skipped %d row(s) with a missing label in %r", null_labels, label_column)
    if non_finite:
        log.warning("skipped %d row(s) whose vector in %r holds NaN or infinity", non_finite, column)
    if len(data.y) == 0:
        raise InputError(
            f"{feats.path}: no row has both a finite embedding and a label in {label_column!r} ({null_embeddings} "
            f"null embedding(s), {non_finite} with NaN/inf, {null_labels} missing label(s))"
        )
    return data


# ---------------------------------------------------------------------------------------------- checks


def _label(value: Any, width: int = 40) -> str:
    # A label column that is really free text (the wrong column named) would otherwise flood the message.
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _fmt_counts(counts: dict[Any, int], limit: int = 8) -> str:
    items = [f"{_label(label)}: {n}" for label, n in list(counts.items())[:limit]]
    return ", ".join(items) + (f", ... ({len(counts)} classes)" if len(counts) > limit else "")


def check_classes(counts: dict[Any, int], label_column: str, *, cv: int | None, test_size: float) -> None:
    """Refuse data the chosen evaluation cannot split, naming the class at fault and its row count."""
    if len(counts) < 2:
        only = next(iter(counts))
        raise InputError(
            f"label column {label_column!r} has a single class ({_label(only)}, {counts[only]} rows); "
            "a classifier needs at least two"
        )
    rows = sum(counts.values())
    if rows >= LABELS_LIKE_TEXT_MIN_ROWS and len(counts) > rows / 2:
        raise InputError(
            f"label column {label_column!r} has {len(counts)} distinct values for {rows} rows "
            f"({_fmt_counts(counts, limit=3)}): is it a text or id column rather than the classes?"
        )
    if cv:
        small = {c: n for c, n in counts.items() if n < cv}
        if small:
            label, n = min(small.items(), key=lambda kv: kv[1])
            raise InputError(
                f"class {_label(label)} has {n} row(s); stratified --cv {cv} needs at least {cv} per class "
                f"({len(small)} class(es) too small: {_fmt_counts(small)}); "
                "lower --cv, or drop or add rows to those classes"
            )
        return
    if test_size <= 0:
        return
    small = {c: n for c, n in counts.items() if n < 2}
    if small:
        label = next(iter(small))
        raise InputError(
            f"class {_label(label)} has 1 row; a stratified hold-out needs at least 2 per class "
            "(one to train on, one to test) "
            f"({len(small)} class(es) with 1 row: {_fmt_counts(small)}); drop them or use --test-size 0"
        )
    n = sum(counts.values())
    n_test = int(np.ceil(test_size * n))
    if n_test < len(counts) or n - n_test < len(counts):
        raise InputError(
            f"--test-size {test_size} of {n} rows leaves {n_test} test and "
            f"{n - n_test} training rows; both need at least "
            f"one row per class ({len(counts)} classes): "
            f"choose a test size between {len(counts) / n:.2f} and {1 - len(counts) / n:.2f}"
        )


def _check_knn(options: ClassifierOptions, classifier: str, n_fit_rows: int) -> None:
    if classifier == "knn" and options.k_neighbors > n_fit_rows:
        raise ConfigError(f"--k-neighbors {options.k_neighbors} exceeds the {n_fit_rows} rows the model is fitted on")


# ---------------------------------------------------------------------------------------------- metrics


def evaluate(y_true: np.ndarray, y_pred: np.ndarray, classes: list | np.ndarray) -> dict[str, Any]:
    """Accuracy, macro-F1, weighted-F1, per-class precision/recall/F1/support and the confusion matrix."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

    classes = list(classes)
    report = classification_report(y_true, y_pred, labels=classes, output_dict=True, zero_division=0)
    per_class = {
        str(c): {k: float(v) if k != "support" else int(v) for k, v in report[str(c)].items()} for c in classes
    }
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=classes, average="weighted", zero_division=0)),
        "per_class": per_class,
        "confusion_matrix": {
            "labels": [_jsonable(c) for c in classes],
            "matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
        },
    }


def format_report(metrics: dict[str, Any]) -> str:
    """The per-class table printed by ``embedkit train`` (sklearn's classification_report layout)."""
    per_class = metrics["per_class"]
    width = max(12, *(len(c) for c in per_class))
    lines = [f"{'':>{width}}  precision    recall  f1-score   support", ""]
    for label, r in per_class.items():
        lines.append(
            f"{label:>{width}}  {r['precision']:9.3f} {r['recall']:9.3f} {r['f1-score']:9.3f} {r['support']:9d}"
        )
    total = sum(r["support"] for r in per_class.values())
    lines += [
        "",
        f"{'accuracy':>{width}}  {'':9} {'':9} {metrics['accuracy']:9.3f} {total:9d}",
        f"{'macro F1':>{width}}  {'':9} {'':9} {metrics['macro_f1']:9.3f} {total:9d}",
    ]
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def plot_confusion_matrix(matrix: list[list[int]], labels: list, path: Path, title: str) -> None:
    """Write the confusion matrix as a PNG (matplotlib's Agg canvas: no display, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    n = len(labels)
    side = min(4 + 0.45 * n, 30)
    fig = Figure(figsize=(side, side * 0.85), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    display = ConfusionMatrixDisplay(np.asarray(matrix), display_labels=[str(c) for c in labels])
    display.plot(ax=ax, include_values=n <= 30, xticks_rotation="vertical", colorbar=True, cmap="Blues")
    ax.set_title(title)
    with artefact.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


# ---------------------------------------------------------------------------------------------- training


def chosen_note(m: dict[str, Any]) -> str:
    """What the fit chose by itself (ridge's alpha, logreg's C and scaling), as a phrase; "" when nothing was."""
    if "search" in m:
        s = m["search"]
        scaling = "on/off" if len(s["grid_standardize"]) > 1 else ("on" if s["grid_standardize"][0] else "off")
        return (
            f"C {s['chosen_C']:g}, {'standardised' if s['chosen_standardize'] else 'unscaled'}: "
            f"{s['folds']}-fold CV accuracy {s['chosen_cv_accuracy']:.4f} on {s['rows']} rows over "
            f"C {s['grid_C'][0]:g}..{s['grid_C'][-1]:g} x {len(s['grid_C'])}, scaling {scaling}"
        )
    if "chosen_alpha" not in m:
        return ""
    grid = m.get("grid_alpha")
    over = f" over alpha {grid[0]:g}..{grid[-1]:g} x {len(grid)}" if grid else ""
    return f"alpha {m['chosen_alpha']:g}, chosen by leave-one-out{over}"


def fitted_on(m: dict[str, Any]) -> str:
    """Which rows the saved model was fitted on, as a phrase for the summary and ``embedkit info``."""
    ev = m["evaluation"]
    if ev["mode"] != "holdout":
        return f"fitted on all {m['fit_rows']} rows"
    if m.get("refit_on_all_rows"):
        return f"fitted on all {m['fit_rows']} rows after the hold-out evaluation"
    return f"fitted on the {m['fit_rows']} training rows only: the evaluated fit (--no-refit)"


@dataclass
class TrainResult:
    """What ``train`` did: where the model went and the metrics written to ``metrics.json``."""

    model_dir: Path
    metrics: dict[str, Any]

    def summary_lines(self) -> list[str]:
        m = self.metrics
        ev = m["evaluation"]
        chosen = f" ({chosen_note(m)})" if chosen_note(m) else ""
        lines = [
            f"{m['rows_used']} rows, {len(m['classes'])} classes, classifier {m['classifier']}{chosen} "
            f"on column {m['column']!r}"
        ]
        skipped = [f"{m['skipped_null_embeddings']} with a null embedding"] if m["skipped_null_embeddings"] else []
        skipped += [f"{m['skipped_null_labels']} with a missing label"] if m["skipped_null_labels"] else []
        skipped += [f"{m['skipped_non_finite']} with NaN/inf values"] if m.get("skipped_non_finite") else []
        if skipped:
            lines.append("skipped " + " and ".join(skipped))
        if ev["mode"] == "none":
            lines.append("no evaluation (--test-size 0 without --cv): the model was fitted on every row")
        else:
            how = (
                f"{ev['folds']}-fold stratified CV"
                if ev["mode"] == "cv"
                else f"stratified hold-out ({ev['n_test']} test rows)"
            )
            spread = ""
            if ev["mode"] == "cv":
                spread = f" (folds: {np.mean(ev['fold_accuracy']):.4f} +/- {np.std(ev['fold_accuracy']):.4f})"
            lines.append(f"{how}: accuracy {m['accuracy']:.4f}{spread}, macro-F1 {m['macro_f1']:.4f}")
            lines.extend(format_report(m).splitlines())
        if m.get("groups"):
            from .audit.groups import format_groups  # the audit package loads torch: only when groups were asked

            lines.append(f"per group of {m['group_column']!r}:")
            lines.extend(format_groups(m["groups"]).splitlines())
        elif m.get("group_column"):
            lines.append(f"per group of {m['group_column']!r}: nothing was evaluated (--test-size 0 without --cv)")
        lines.append(f"model -> {self.model_dir} ({fitted_on(m)})")
        return lines


def _split(data: TrainingData, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    # Indices into the rows kept by load_training_data, in file order: a by-hand reproduction that drops the
    # same rows and calls train_test_split(range(n), test_size, stratify=y, random_state=seed) gets this split.
    return train_test_split(np.arange(len(data.y)), test_size=test_size, stratify=data.y, random_state=seed)


def _min_count(y: np.ndarray) -> int:
    return min(Counter(y.tolist()).values())


def cross_validate(
    X: np.ndarray,
    y: np.ndarray,
    classifier: str = DEFAULT_CLASSIFIER,
    options: ClassifierOptions | None = None,
    *,
    cv: int = 5,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold predictions and the fold of every row, from the stratified shuffled K-fold ``train --cv`` runs.

    Shared with the probe stage, so a probe score and ``embedkit train --cv`` on the same vectors agree exactly.
    """
    from sklearn.model_selection import StratifiedKFold

    options = options or ClassifierOptions()
    predicted = np.empty(len(y), dtype=y.dtype)
    fold = np.full(len(y), -1, dtype=np.int32)
    for k, (tr, te) in enumerate(StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed).split(X, y)):
        _check_knn(options, classifier, len(tr))
        # A search runs inside the fold, on its training rows only: choosing C on rows later scored would
        # make the cross-validated accuracy optimistic.
        estimator, _ = fit_classifier(X[tr], y[tr], classifier, options, seed=seed)
        predicted[te] = estimator.predict(X[te])
        fold[te] = k
    return predicted, fold


def train(
    features: str | Path,
    label_column: str,
    model_dir: str | Path,
    *,
    classifier: str = DEFAULT_CLASSIFIER,
    options: ClassifierOptions | None = None,
    column: str | None = None,
    cv: int | None = None,
    test_size: float = DEFAULT_TEST_SIZE,
    seed: int = 0,
    refit: bool = True,
    overwrite: bool = False,
    wait: bool = False,
    group_column: str | None = None,
) -> TrainResult:
    """Fit a classifier on a features file, evaluate it, and write a model directory.

    Evaluation is a stratified hold-out of ``test_size``: the model is fitted on the rest and scored on it, then
    (``refit``, the default) fitted again on every row with the settings the training rows chose, so the saved
    model has seen all the data; ``refit=False`` saves the evaluated fit itself. With ``cv``, a stratified K-fold
    cross-validation's out-of-fold predictions give the metrics (the saved model is fitted on every row).
    ``test_size`` 0 without ``cv`` fits on every row and evaluates nothing. With ``group_column``, the evaluated rows'
    accuracy and error rates are also reported per group of that column (``metrics["groups"]``).

    The model directory's lock is held from before the features are read until the new directory is switched in
    (``wait`` waits for another writer instead of failing); until then an existing model stays whole and loadable.

    Raises:
        InputError: missing label column, a single class, a class too small for the split, no usable rows.
        ConfigError: an unknown classifier or bad option value.
        OutputError: the model directory cannot be written, or holds a model (without ``overwrite``) or files that
            are not an embedkit model.
        BusyError: another process is writing the same model directory (without ``wait``).
    """
    if classifier not in CLASSIFIERS:
        raise choice_error("classifier", classifier, CLASSIFIERS)
    if cv is not None and cv < 2:
        raise ConfigError(f"--cv needs at least 2 folds, got {cv}")
    if not 0 <= test_size < 1:
        raise ConfigError(f"--test-size must be in [0, 1), got {test_size}")
    options = options or ClassifierOptions()
    model_dir = Path(model_dir)
    with artefact.writing_dir(
        model_dir,
        kind=MODEL_KIND,
        manifest_name=MANIFEST,
        overwrite=overwrite,
        wait=wait,
        former_names=(MODEL_FILE, METRICS_FILE, CONFUSION_PNG, EVAL_PREDICTIONS),
    ) as stage:
        data = load_training_data(features, label_column, column, group_column)
        estimator, metrics, evaluated, eval_pred, fold = _fit_and_evaluate(
            data, label_column, classifier, options, cv=cv, test_size=test_size, seed=seed, refit=refit
        )
        if data.groups is not None:
            metrics["group_column"] = group_column
            metrics["groups"] = _group_report(data, evaluated, eval_pred)
        _write_model_dir(stage, estimator, data, metrics, evaluated, eval_pred, fold)
    return TrainResult(model_dir=model_dir, metrics=metrics)


def _group_report(data: TrainingData, evaluated: np.ndarray, eval_pred: np.ndarray) -> dict[str, Any] | None:
    """Per-group accuracy and error rates of the evaluated rows (None when nothing was evaluated)."""
    from .audit.groups import group_metrics

    if not len(evaluated) or data.groups is None:
        return None
    return group_metrics(data.y[evaluated], eval_pred[evaluated], data.groups[evaluated]).to_dict()


def _fit_and_evaluate(
    data: TrainingData,
    label_column: str,
    classifier: str,
    options: ClassifierOptions,
    *,
    cv: int | None,
    test_size: float,
    seed: int,
    refit: bool,
):
    """Evaluate as asked and fit the model to save. Returns ``(estimator, metrics, evaluated, eval_pred, fold)``."""
    counts = data.class_counts
    check_classes(counts, label_column, cv=cv, test_size=test_size)
    classes = sorted(counts)
    started = time.perf_counter()

    eval_pred = np.empty(len(data.y), dtype=data.y.dtype)
    fold = np.full(len(data.y), -1, dtype=np.int32)
    evaluation: dict[str, Any]
    search: dict[str, Any] | None = None
    fit_options = options
    if cv:
        eval_pred, fold = cross_validate(data.X, data.y, classifier, options, cv=cv, seed=seed)
        fold_accuracy = [float(np.mean(eval_pred[fold == k] == data.y[fold == k])) for k in range(cv)]
        evaluated = np.arange(len(data.y))
        evaluation = {"mode": "cv", "folds": cv, "fold_accuracy": fold_accuracy, "n_test": len(data.y)}
        fit_rows = np.arange(len(data.y))
    elif test_size > 0:
        tr, te = _split(data, test_size, seed)
        _check_knn(options, classifier, len(tr))
        estimator, search = fit_classifier(data.X[tr], data.y[tr], classifier, options, seed=seed)  # test rows unseen
        eval_pred[te] = estimator.predict(data.X[te])
        evaluated = np.sort(te)
        evaluation = {"mode": "holdout", "test_size": test_size, "n_train": len(tr), "n_test": len(te)}
        fit_rows = np.arange(len(data.y)) if refit else tr
        # The refit reuses what the training rows chose (C, scaling): the hold-out score then describes the saved
        # settings, and the search (the costly part) runs once.
        fit_options = settled(options, search)
    else:
        evaluated = np.array([], dtype=np.int64)
        evaluation = {"mode": "none"}
        fit_rows = np.arange(len(data.y))
    if cv or test_size == 0 or refit:
        _check_knn(options, classifier, len(fit_rows))
        estimator, refit_search = fit_classifier(data.X[fit_rows], data.y[fit_rows], classifier, fit_options, seed=seed)
        search = refit_search or search
    seconds = time.perf_counter() - started

    metrics: dict[str, Any] = {
        "classifier": classifier,
        "options": options.to_dict(),
        "seed": seed,
        "label_column": label_column,
        "column": data.column,
        "features": str(data.features.path),
        "rows_used": int(len(data.y)),
        "skipped_null_embeddings": data.skipped_null_embeddings,
        "skipped_null_labels": data.skipped_null_labels,
        "skipped_non_finite": data.skipped_non_finite,
        "classes": [_jsonable(c) for c in classes],
        "class_counts": {str(c): n for c, n in counts.items()},
        "evaluation": evaluation,
        "fit_rows": int(len(fit_rows)),
        "refit_on_all_rows": bool(refit and evaluation["mode"] == "holdout"),
        "seconds": round(seconds, 3),
    }
    if search is not None:  # the search that chose the saved model's settings; --C fixes them
        metrics["search"] = search
    if hasattr(estimator[-1], "alpha_"):  # the penalty ridge chose, so a user can fix it with --alpha
        metrics["chosen_alpha"] = float(estimator[-1].alpha_)
        metrics["grid_alpha"] = list(RIDGE_ALPHAS)
    if len(evaluated):
        metrics.update(evaluate(data.y[evaluated], eval_pred[evaluated], classes))
    return estimator, metrics, evaluated, eval_pred, fold


def _write_model_dir(
    stage: artefact.Staging,
    estimator,
    data: TrainingData,
    metrics: dict,
    evaluated: np.ndarray,
    eval_pred: np.ndarray,
    fold: np.ndarray,
) -> None:
    """Write every file of the model into the staging directory, then seal it with the manifest."""
    import skops.io as sio

    with open(stage.path(MODEL_FILE), "wb") as f:
        sio.dump(estimator, f)
    stage.path(METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    if len(evaluated):
        columns = {
            "id": data.ids.take(pa.array(evaluated)),
            "label": pa.array(data.y[evaluated].tolist()),
            "predicted": pa.array(eval_pred[evaluated].tolist()),
        }
        if metrics["evaluation"]["mode"] == "cv":
            columns["fold"] = pa.array(fold[evaluated])
        pq.write_table(pa.table(columns), stage.path(EVAL_PREDICTIONS))
        ev = metrics["evaluation"]
        evaluation = f"{ev['folds']}-fold CV" if ev["mode"] == "cv" else "hold-out"
        title = f"{metrics['classifier']}, {evaluation}: accuracy {metrics['accuracy']:.3f}"
        plot_confusion_matrix(
            metrics["confusion_matrix"]["matrix"], metrics["classes"], stage.path(CONFUSION_PNG), title
        )
    column_config = data.features.column_config(data.column)
    inputs = data.features.meta.get("input_columns")
    inputs = inputs if isinstance(inputs, dict) else {}
    stage.seal(
        {
            "format_version": MODEL_FORMAT_VERSION,
            "classifier": metrics["classifier"],
            "options": metrics["options"],
            **({"search": metrics["search"]} if "search" in metrics else {}),
            "classes": metrics["classes"],
            "label_column": metrics["label_column"],
            "label_type": "int" if data.y.dtype.kind in "iu" else "bool" if data.y.dtype.kind == "b" else "str",
            "column": data.column,
            # How the training text was read, so predict reads new raw text the same way unless told otherwise.
            "text_column": inputs.get("text") if isinstance(inputs.get("text"), str) else None,
            "id_column": inputs.get("id") if isinstance(inputs.get("id"), str) else None,
            "dim": int(data.X.shape[1]),
            "extract_config": column_config.to_dict(),
            "features_meta": {k: v for k, v in data.features.meta.items() if k != "config"},
            "versions": library_versions("scikit-learn", "skops"),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    )  # the manifest, with the sha256 of every file above, is written last


# ---------------------------------------------------------------------------------------------- loading


@dataclass
class ClassifierModel:
    """A loaded model directory: the fitted pipeline plus everything needed to embed new text for it."""

    path: Path
    estimator: Any
    manifest: dict[str, Any]
    trust_remote_code: bool = False  # the caller's decision; the manifest's own is never used
    config: ExtractConfig = field(init=False)

    def __post_init__(self) -> None:
        features_meta = self.manifest.get("features_meta")
        model = features_meta.get("model") if isinstance(features_meta, dict) else None
        self.config = ExtractConfig.from_stored(
            self.manifest.get("extract_config"),
            origin=str(self.path / MANIFEST),
            trust_remote_code=self.trust_remote_code,
            model=model,
        )

    @property
    def classes(self) -> list:
        return [_jsonable(c) for c in self.estimator.classes_]

    @property
    def has_proba(self) -> bool:
        return hasattr(self.estimator, "predict_proba")

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def text_column(self) -> str:
        """The column the training text was read from (``text`` for models that did not record it)."""
        return self.manifest.get("text_column") or "text"

    @property
    def id_column(self) -> str | None:
        return self.manifest.get("id_column")

    def predict_vectors(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels (and class probabilities in ``classes`` order, when the classifier has them) for vectors."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise IncompatibleError(f"vectors have shape {X.shape}; this model expects {self.dim} dimensions")
        if not np.isfinite(X).all():
            bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
            raise InputError(
                f"{len(bad)} vector(s) hold NaN or infinity (first at row {bad[0]}); no class can be predicted for them"
            )
        if len(X) == 0:
            return np.empty(0, dtype=object), (np.empty((0, len(self.classes))) if self.has_proba else None)
        proba = self.estimator.predict_proba(X) if self.has_proba else None
        labels = self.estimator.classes_[np.argmax(proba, axis=1)] if proba is not None else self.estimator.predict(X)
        return labels, proba

    def extractor(self, **runtime):
        """An Extractor with the training vectors' settings (runtime knobs: device, batch_tokens, threads)."""
        from .extract import Extractor

        extractor = Extractor(self.config, **runtime)
        if extractor.config.vector_settings() != self.config.vector_settings():
            raise IncompatibleError(
                f"the model in {self.config.model} now resolves to other settings than at training time: "
                f"{_differences(self.config.vector_settings(), extractor.config.vector_settings())}"
            )
        return extractor

    def predict_texts(self, texts: list[str], extractor=None) -> tuple[np.ndarray, np.ndarray | None]:
        """Embed ``texts`` with the stored settings and classify them (an InputError names any bad text)."""
        extractor = extractor or self.extractor()
        return self.predict_vectors(extractor.embed(list(texts)))


def _differences(expected: dict[str, Any], found: dict[str, Any]) -> str:
    keys = [k for k in dict.fromkeys([*expected, *found]) if expected.get(k) != found.get(k)]
    return "; ".join(f"{k}: model has {expected.get(k)!r}, input has {found.get(k)!r}" for k in keys)


def load_model(model_dir: str | Path, *, trust_remote_code: bool = False) -> ClassifierModel:
    """Load a model directory written by ``train``, verifying its manifest, checksums and stored types.

    Raises:
        InputError: not a complete model directory; a file missing, symlinked or not matching the manifest's
            sha256; a manifest field with a wrong type or value (naming it); types skops must not load.
    """
    import skops.io as sio

    model_dir = Path(model_dir)
    opened = _open_model_dir(model_dir)
    manifest = opened.manifest
    model_file = opened.path(MODEL_FILE)
    try:
        untrusted = sio.get_untrusted_types(file=model_file)
    except Exception as exc:  # skops raises assorted errors on a damaged archive
        raise InputError(f"{model_file} is not a readable skops file: {exc}") from exc
    unknown = sorted(set(untrusted) - set(TRUSTED_EXTRA_TYPES))
    if unknown:
        raise InputError(
            f"{model_file} contains types embedkit does not load (they could run code): {', '.join(unknown)}"
        )
    try:
        estimator = sio.load(model_file, trusted=list(untrusted))
        _check_estimator(estimator, manifest, model_dir / MANIFEST)  # its InputError reads "could not be loaded: ..."
    except Exception as exc:
        raise InputError(f"{model_file} could not be loaded: {exc}") from exc
    return ClassifierModel(path=model_dir, estimator=estimator, manifest=manifest, trust_remote_code=trust_remote_code)


def describe_model(model_dir: str | Path) -> dict[str, Any]:
    """What ``embedkit info MODEL_DIR`` prints: the classifier, its classes and settings, and the metrics of its
    evaluation (per group too, when trained with ``--group-column``). Every file is verified; nothing is unpickled.
    """
    model_dir = Path(model_dir)
    opened = _open_model_dir(model_dir)
    manifest = opened.manifest
    metrics = artefact.parse_json(opened.path(METRICS_FILE).read_bytes(), where=model_dir / METRICS_FILE)
    if not isinstance(metrics, dict):
        raise InputError(f"{model_dir / METRICS_FILE} is not a JSON object; the model is corrupt")
    return {
        "path": str(model_dir),
        "classifier": manifest["classifier"],
        "classes": manifest["classes"],
        "label_column": manifest["label_column"],
        "column": manifest["column"],
        "text_column": manifest.get("text_column"),
        "id_column": manifest.get("id_column"),
        "dim": manifest["dim"],
        "options": manifest.get("options", {}),
        "config": manifest["extract_config"],
        "created_at": manifest.get("created_at"),
        "metrics": {k: v for k, v in metrics.items() if k not in ("confusion_matrix", "per_class")},
    }


def model_info_lines(info: dict[str, Any]) -> list[str]:
    """``describe_model``'s dict as the lines ``embedkit info MODEL_DIR`` prints."""
    m, classes = info["metrics"], info["classes"]
    shown = ", ".join(map(str, classes[:10])) + (", ..." if len(classes) > 10 else "")
    lines = [
        f"model     {info['path']} (classifier, created {info['created_at']})",
        f"predicts  {info['label_column']!r}: {len(classes)} classes ({shown})",
        f"from      column {info['column']!r} ({info['dim']}-d), settings "
        + ", ".join(f"{k}={v}" for k, v in info["config"].items() if k != "trust_remote_code"),
        f"estimator {info['classifier']}: " + ", ".join(f"{k}={v}" for k, v in info["options"].items()),
    ]
    if info.get("text_column"):
        ids = f"ids from {info['id_column']!r}" if info.get("id_column") else "ids numbered by row"
        lines.append(f"reads     raw text from column {info['text_column']!r}, {ids} (predict's defaults)")
    if chosen_note(m):
        lines.append(f"chosen    {chosen_note(m)}")
    ev = m.get("evaluation", {})
    if ev.get("mode") in ("cv", "holdout") and "accuracy" in m:
        lines.append(f"evaluated {ev['mode']}: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}")
    else:
        lines.append("evaluated not evaluated")
    if ev and "fit_rows" in m:
        lines.append(f"saved     {fitted_on(m)}")
    if m.get("groups"):
        from .audit.groups import format_groups  # the audit package loads torch: only when there are groups

        lines.append(f"per group of {m['group_column']!r}:\n" + format_groups(m["groups"]))
    return lines


def _open_model_dir(model_dir: Path) -> artefact.Artefact:
    """The model directory with every file verified and every manifest field the loaders use checked."""
    try:
        opened = artefact.open_dir(model_dir, manifest_name=MANIFEST, what="classifier model")
    except InputError:
        _refuse_older_format(model_dir)
        raise
    check_manifest(opened.manifest, model_dir / MANIFEST)
    return opened


def _refuse_older_format(model_dir: Path) -> None:
    """InputError saying "train again" for a model written before verified manifests (format 1), else nothing.

    Format 1 manifests list bare checksums, which the artefact reader refuses as malformed; a user deserves to
    hear that the model is merely old.
    """
    path = model_dir / MANIFEST
    try:
        if path.is_symlink() or path.stat().st_size > artefact.MAX_MANIFEST_BYTES:
            return
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return
    if isinstance(manifest, dict) and manifest.get("kind") == MODEL_KIND and manifest.get("format_version") == 1:
        raise InputError(
            f"{model_dir} was written by an older embedkit (model format 1, without verified file "
            "sizes); train it again with this version"
        )


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


# Stored extraction settings: the type of every field a reader passes on (ExtractConfig checks the values).
_SETTING_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "revision": (str, type(None)),
    "max_length": (int, type(None)),
    "long_text": (str,),
    "stride": (int, type(None)),
    "normalize": (bool,),
    "dtype": (str,),
    "trust_remote_code": (bool,),
    "backend": (str,),
}


def _check_settings(value: Any) -> str | None:
    """What is wrong with stored extraction settings, or None."""
    if not isinstance(value, dict):
        return f"must be an object of extraction settings, got {type(value).__name__}"
    try:  # first, so ExtractConfig's own words name a bad value wherever it checks one
        ExtractConfig.from_dict(value)
    except (ConfigError, TypeError, ValueError) as exc:
        return f"is not valid: {exc}"
    # What ExtractConfig's constructor converts instead of refusing ("2" -> 2, a single name -> a list) is still
    # not what train wrote: refused here, since a converted value may not describe the stored vectors.
    for key, types in _SETTING_TYPES.items():
        if key in value and (not isinstance(value[key], types) or (bool not in types and isinstance(value[key], bool))):
            return f"setting {key!r} has a wrong type ({type(value[key]).__name__})"
    for key, kind in (("layers", _is_int), ("pooling", lambda v: isinstance(v, str))):
        items = value.get(key)
        if key in value and (not isinstance(items, list) or not items or not all(kind(v) for v in items)):
            return f"setting {key!r} must be a non-empty list of {'integers' if key == 'layers' else 'names'}"
    return None


def check_manifest(manifest: dict[str, Any], where: Path) -> None:
    """Check every field of a model manifest the loader and ``predict`` use; InputError naming the first bad one.

    The manifest is read from a file anyone may have edited: a wrong value must be a clean "corrupt model" message
    (exit 3), never a crash deeper in, and never a value that changes what code runs.
    """

    def bad(name: str, problem: str) -> InputError:
        return InputError(
            f"{where}: field {name!r} {problem}; the model directory is corrupt or was edited by hand (train it again)"
        )

    if manifest.get("kind") != MODEL_KIND or manifest.get("format_version") != MODEL_FORMAT_VERSION:
        raise InputError(
            f"{where.parent}: unsupported model format (kind {manifest.get('kind')!r}, version "
            f"{manifest.get('format_version')!r}; this embedkit reads {MODEL_KIND!r} version "
            f"{MODEL_FORMAT_VERSION})"
        )
    if MODEL_FILE not in manifest["files"]:
        raise bad("files", f"does not list {MODEL_FILE}")
    if manifest.get("classifier") not in CLASSIFIERS:
        raise bad("classifier", f"is {manifest.get('classifier')!r}, not one of {', '.join(CLASSIFIERS)}")
    for name in ("label_column", "column"):
        if not isinstance(manifest.get(name), str) or not manifest[name]:
            raise bad(name, "must be a non-empty string")
    dim = manifest.get("dim")
    if not _is_int(dim) or dim < 1:
        raise bad("dim", f"must be a positive integer, got {dim!r}")
    label_type = manifest.get("label_type")
    if label_type not in LABEL_TYPES:
        raise bad("label_type", f"is {label_type!r}, not one of {', '.join(LABEL_TYPES)}")
    classes = manifest.get("classes")
    kind = {"int": _is_int, "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str)}[label_type]
    if not isinstance(classes, list) or len(classes) < 2 or not all(kind(c) for c in classes):
        raise bad("classes", f"must be a list of at least two {label_type} labels (label_type {label_type!r})")
    if len(set(classes)) != len(classes):
        raise bad("classes", "repeats a label")
    problem = _check_settings(manifest.get("extract_config"))
    if problem:
        raise bad("extract_config", problem)
    for name in ("text_column", "id_column"):  # absent in models trained before they were recorded
        if manifest.get(name) is not None and (not isinstance(manifest[name], str) or not manifest[name]):
            raise bad(name, "must be a non-empty string or null")
    if "features_meta" in manifest and not isinstance(manifest["features_meta"], dict):
        raise bad("features_meta", "must be an object")


def _check_estimator(estimator: Any, manifest: dict[str, Any], where: Path) -> None:
    """The loaded pipeline must be the one the manifest describes (its classes and input width)."""
    classes = [_jsonable(c) for c in getattr(estimator, "classes_", [])]
    if classes != manifest["classes"]:
        raise InputError(
            f"{where}: field 'classes' ({manifest['classes']!r}) differs from the model's own classes "
            f"({classes!r}); the model directory is corrupt or was edited by hand"
        )
    width = getattr(estimator, "n_features_in_", None)
    if width is not None and width != manifest["dim"]:
        raise InputError(
            f"{where}: field 'dim' ({manifest['dim']}) differs from the {width} dimensions the model "
            "was fitted on; the model directory is corrupt or was edited by hand"
        )


# ---------------------------------------------------------------------------------------------- predicting


@dataclass
class PredictSummary:
    output: Path
    rows: int = 0
    predicted: int = 0
    input_kind: str = "text"
    bad_rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def summary_lines(self) -> list[str]:
        parts = [f"{self.rows} rows -> {self.output}", f"{self.predicted} predicted ({self.input_kind} input)"]
        if self.bad_rows:
            bad = ", ".join(f"{n} {s}" for s, n in sorted(self.bad_rows.items()))
            parts.append(f"{sum(self.bad_rows.values())} kept with no prediction ({bad})")
        parts.append(f"{self.seconds:.1f}s")
        return ["; ".join(parts)]


def proba_column(label: Any) -> str:
    return f"proba_{label}"


def matching_column(model: ClassifierModel, feats: Features, column: str | None = None) -> str:
    """The embedding column of ``feats`` made with the model's settings; IncompatibleError naming what differs."""
    wanted = model.config.vector_settings()
    candidates = [feats.embedding_column(column)] if column else feats.embedding_columns
    if not candidates:
        raise InputError(f"{feats.path} has no embedding column; columns: {', '.join(feats.schema.names)}")
    for name in candidates:
        if (
            feats.column_config(name).vector_settings() == wanted
            and feats.schema.field(name).type.list_size == model.dim
        ):
            if not feats.column_config(name).model_difference(model.config):
                return name
    closest = model.manifest["column"] if model.manifest["column"] in candidates else candidates[0]
    found = feats.column_config(closest).vector_settings()
    other_model = feats.column_config(closest).model_difference(model.config)
    raise IncompatibleError(
        f"{feats.path} was embedded with other settings than the model's training data (column {closest!r}): "
        f"{_differences(wanted, found) or other_model or 'dimensions differ'}; "
        "embed the raw text again, or pass the raw text to predict"
    )


class _OutputWriter:
    """Streams prediction tables to Parquet, CSV or JSONL into the temp file ``artefact.writing_file`` renames.

    Not ``store.PartWriter``: that one writes resumable Parquet parts under a ``.partial`` directory and merges
    them, for features; predictions are one pass, in three formats, into one temp file renamed at the end.
    """

    def __init__(self, tmp: Path, kind: str) -> None:
        self.tmp, self.kind = tmp, kind
        self.writer: Any = None  # a ParquetWriter, a CSVWriter or a text file, chosen by kind on the first write
        self.schema: pa.Schema | None = None

    def write(self, table: pa.Table) -> None:
        if self.schema is None:
            self.schema = table.schema
            if self.kind == "parquet":
                self.writer = pq.ParquetWriter(self.tmp, self.schema)
            elif self.kind == "csv":
                import pyarrow.csv as pacsv

                self.writer = pacsv.CSVWriter(self.tmp, self.schema)
            else:
                self.writer = open(self.tmp, "w", encoding="utf-8")
        table = table.cast(self.schema)
        if self.kind == "jsonl":
            for row in table.to_pylist():
                self.writer.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        else:
            self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _prediction_table(
    model: ClassifierModel, base: pa.Table, vectors: pa.Array | pa.ChunkedArray, status: pa.Array
) -> pa.Table:
    """``base`` (id + keep columns) plus status, prediction and one probability column per class."""
    if isinstance(vectors, pa.ChunkedArray):
        vectors = vectors.combine_chunks()
    valid = pc.is_valid(vectors).to_numpy(zero_copy_only=False).copy()
    matrix = matrix_from_arrow(vectors.filter(pa.array(valid))) if valid.any() else np.empty((0, model.dim))
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        # A vector holding NaN/inf (a damaged or hand-made features file) is kept like a null one: no prediction,
        # and a status saying why, so one bad row neither stops the run nor goes unnoticed.
        broken = np.zeros(len(valid), dtype=bool)
        broken[np.flatnonzero(valid)[~finite]] = True
        valid &= ~broken
        status = pc.if_else(pa.array(broken), pa.scalar(NON_FINITE_STATUS), pc.cast(status, pa.string()))
        matrix = matrix[finite]
    rows = np.flatnonzero(valid)
    labels, proba = model.predict_vectors(matrix)
    predicted: list[Any] = [None] * len(valid)
    for i, label in zip(rows, labels.tolist()):
        predicted[i] = label
    label_type = {"int": pa.int64(), "bool": pa.bool_()}.get(model.manifest.get("label_type", ""), pa.string())
    table = base.append_column("status", status).append_column("prediction", pa.array(predicted, type=label_type))
    if proba is not None:
        for k, label in enumerate(model.classes):
            column = np.full(len(valid), np.nan)
            column[rows] = proba[:, k]
            table = table.append_column(
                proba_column(_jsonable(label)), pa.array(column, mask=~valid, type=pa.float32())
            )
    return table


def _text_batches(model: ClassifierModel, input, text_column, id_column, keep, fmt, runtime, batch_rows, progress):
    from .embed import build_table
    from .sources import Source

    text_column = text_column or model.text_column
    try:
        source = Source(input, text_column=text_column, id_column=id_column or model.id_column, keep=keep, fmt=fmt)
    except InputError:
        # The id column recorded at training time is a default, not a requirement: new input without it is
        # numbered by row. Any other problem (the text column missing) is raised again without it.
        if id_column is not None or model.id_column is None:
            raise
        source = Source(input, text_column=text_column, keep=keep, fmt=fmt)
        log.info("%s has no column %r (the model's id column): rows are numbered instead", input, model.id_column)
    extractor = model.extractor(**runtime)
    column = extractor.columns[0]
    from tqdm.auto import tqdm

    with tqdm(total=source.total_rows(), unit="text", file=sys.stderr, disable=not progress, desc="predict") as bar:
        for records in source.batches(batch_rows):
            texts = [None if e is not None else t for t, e in zip(records.texts, records.parse_errors)]
            table = build_table(records, extractor.encode(texts), extractor)
            base = table.select(["id", *keep])
            yield _prediction_table(model, base, table.column(column), table.column("status").combine_chunks())
            bar.update(len(records))


def _feature_batches(model: ClassifierModel, input, column, keep, batch_rows):
    feats = open_features(input)
    column = matching_column(model, feats, column)
    feats.require_columns(["id", *keep])
    has_status = "status" in feats.schema.names
    wanted = list(dict.fromkeys(["id", *keep, *(["status"] if has_status else []), column]))
    try:
        for batch in parquet_batches(pq.ParquetFile(feats.path), batch_rows, wanted):
            vectors = batch.column(column)
            if has_status:
                status = batch.column("status")
            else:
                status = pc.if_else(pc.is_valid(vectors), "ok", "null_embedding")
            yield _prediction_table(model, pa.Table.from_batches([batch]).select(["id", *keep]), vectors, status)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{feats.path}: corrupt or unreadable Parquet: {exc}") from exc


def predict_file(
    model_dir: str | Path,
    input: str | Path,
    output: str | Path,
    *,
    text_column: str | None = None,
    id_column: str | None = None,
    keep: tuple[str, ...] | list[str] = (),
    column: str | None = None,
    fmt: str | None = None,
    device: str = "auto",
    batch_tokens: int | None = None,
    threads: int | None = None,
    overwrite: bool = False,
    wait: bool = False,
    progress: bool = True,
    batch_rows: int = 4096,
    trust_remote_code: bool = False,
) -> PredictSummary:
    """Classify every row of ``input`` with a saved model and write id, keep columns, status, prediction, proba_*.

    ``input`` is either a features Parquet written by ``embedkit embed`` (its vectors are used as they are, and it
    must have been embedded with the model's settings) or raw text in any format ``Source`` reads (embedded here
    with the model's stored settings). Raw text is read from ``text_column`` and its ids from ``id_column``; left
    None, the columns the training data was read from are used (recorded in the model; ``text`` and row numbers
    for older models, and row numbers when the input lacks the recorded id column). Rows that cannot be embedded
    are kept with a null prediction and their status. The output format follows the extension of ``output``
    (.parquet, .csv, .jsonl).

    The output is written under its lock (``wait``: wait for another writer instead of a BusyError) to a file
    beside it, renamed onto ``output`` only once complete: an existing output stays whole until then.
    """
    started = time.perf_counter()
    output = Path(output)
    kind = OUTPUT_FORMATS.get(output.suffix.lower())
    if kind is None:
        raise ConfigError(
            f"cannot tell the output format of {output}; use an extension among {', '.join(OUTPUT_FORMATS)}"
        )
    if output.is_dir():
        raise OutputError(f"output {output} is a directory; give a file path")
    if output.exists() and not overwrite:
        raise OutputError(f"output {output} exists; pass --overwrite to replace it")
    model = load_model(model_dir, trust_remote_code=trust_remote_code)
    keep = list(keep)
    clash = [c for c in keep if c in ("id", "status", "prediction") or c.startswith("proba_")]
    if clash:
        raise ConfigError(f"--keep column(s) {', '.join(clash)} clash with predict's own output columns")
    features_input = is_features_file(input)
    if features_input:
        batches = _feature_batches(model, input, column, keep, batch_rows)
    else:
        runtime = {"device": device, "batch_tokens": batch_tokens, "threads": threads}
        batches = _text_batches(model, input, text_column, id_column, keep, fmt, runtime, batch_rows, progress)
    summary = PredictSummary(output=output, input_kind="features" if features_input else "text")
    bad: Counter = Counter()
    with artefact.writing_file(output, overwrite=overwrite, wait=wait) as tmp:
        writer = _OutputWriter(tmp, kind)
        try:
            for table in batches:
                writer.write(table)
                summary.rows += table.num_rows
                predicted = pc.is_valid(table.column("prediction"))
                summary.predicted += int(pc.sum(predicted).as_py() or 0)
                bad.update(table.column("status").filter(pc.invert(predicted)).to_pylist())
        finally:
            writer.close()
        if summary.rows == 0:
            raise InputError(f"{input} holds no data rows")
    summary.bad_rows = {str(k): v for k, v in bad.items()}
    summary.seconds = time.perf_counter() - started
    return summary


__all__ = [
    "CLASSIFIERS",
    "DEFAULT_CLASSIFIER",
    "ClassifierModel",
    "ClassifierOptions",
    "PredictSummary",
    "TrainResult",
    "build_classifier",
    "cross_validate",
    "evaluate",
    "load_model",
    "load_training_data",
    "predict_file",
    "train",
]
