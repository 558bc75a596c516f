"""Fitting a classifier: the cross-validated choice of logistic regression's C and scaling, the scikit-learn pipeline,
and the stratified K-fold out-of-fold predictions ``train --cv`` and the probe stage share."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError, choice_error
from .options import (
    CLASSIFIERS,
    DEFAULT_C,
    DEFAULT_CLASSIFIER,
    LOGREG_CS,
    LOGREG_SEARCH_FOLDS,
    LOGREG_SEARCH_MAX_ROWS,
    LOGREG_SEARCH_PATIENCE,
    MLP_EARLY_STOPPING_MIN_PER_CLASS,
    RIDGE_ALPHAS,
    ClassifierOptions,
)

log = logging.getLogger(__name__)


def search_logreg(X: np.ndarray, y: np.ndarray, options: ClassifierOptions, *, seed: int = 0) -> dict[str, Any]:
    """Choose logistic regression's C (and, unless fixed, the scaler) by stratified K-fold CV log-loss.

    For every setting of the scaler, each fold fits the grid ``LOGREG_CS`` as one warm-started regularisation path
    (lbfgs, each C starting from the previous solution, converged to the usual tolerance within ``max_iter``),
    stopping ``LOGREG_SEARCH_PATIENCE`` steps after the lowest mean log-loss of the held-out folds. The lowest
    log-loss wins, not the highest accuracy: accuracy on a few hundred rows moves in steps of 1/rows and stays flat
    over wide ranges of C, so its best C jumps with the fold cut, where the log-loss (which scores every row's
    probabilities) has one minimum that stays put (docstrings: the best-accuracy C moved between 0.003 and 0.01
    with the fold seed, the lowest log-loss was at 0.01 for all four seeds tried). The scaler is fitted on the
    searched rows before the folds are cut; it sees no label, so that leaks nothing the choice could overfit.
    Ties go to the smaller C (stronger regularisation), then to the scaler on.

    The fits run on one thread (BLAS and OpenMP, whose pools scikit-learn's loss and lbfgs use): fold fits of
    <= ``LOGREG_SEARCH_MAX_ROWS`` rows gain nothing from more, and on a shared machine threads spinning while they
    wait for a core made each fit many times slower (a 960-row fit: 0.3 s on one BLAS thread, 8-9 s on two).

    Returns the grid, the mean CV log-loss and accuracy of every (scaler, C) (None past where the path stopped),
    the chosen pair with its scores, the rows searched and the seconds taken; ``train`` records it in metrics.json
    and the model manifest.
    """
    import sklearn.linear_model  # noqa: F401  # loaded before the limit below, which covers only loaded libraries
    from sklearn.model_selection import StratifiedKFold, train_test_split
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # a scikit-learn dependency

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
    log_loss: dict[str, list[float | None]] = {}
    accuracy: dict[str, list[float | None]] = {}
    with threadpool_limits(limits=1):
        for standardize in settings:
            Xf = StandardScaler().fit_transform(Xs) if standardize else Xs
            key = "scaled" if standardize else "unscaled"
            log_loss[key], accuracy[key] = _path_scores(Xf, ys, splits, options, seed)
    best = min(  # lowest log-loss; among equals the smallest C (i), then the scaler on (not True < not False)
        (loss, i, not standardize)
        for standardize in settings
        for i, loss in enumerate(log_loss["scaled" if standardize else "unscaled"])
        if loss is not None
    )
    chosen = "unscaled" if best[2] else "scaled"
    return {
        "grid_C": list(LOGREG_CS),
        "grid_standardize": settings,
        "folds": folds,
        "rows": int(len(ys)),
        "score": "log_loss",
        "cv_log_loss": log_loss,
        "cv_accuracy": accuracy,
        "chosen_C": LOGREG_CS[best[1]],
        "chosen_standardize": not best[2],
        "chosen_cv_log_loss": best[0],
        "chosen_cv_accuracy": accuracy[chosen][best[1]],
        "seconds": round(time.perf_counter() - started, 3),
    }


def _path_scores(X: np.ndarray, y: np.ndarray, splits: list, options: ClassifierOptions, seed: int) -> tuple:
    """Mean CV log-loss and accuracy at every C of ``LOGREG_CS`` along warm-started paths (None where not reached)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    class_weight = None if options.class_weight == "none" else options.class_weight
    models = [
        LogisticRegression(warm_start=True, max_iter=options.max_iter, class_weight=class_weight, random_state=seed)
        for _ in splits
    ]
    losses: list[float] = []
    accuracies: list[float] = []
    best, since_best = np.inf, 0
    with warnings.catch_warnings():
        # A large-C fit that stops at max_iter still ranks the grid; the saved model's own fit warns as usual.
        warnings.simplefilter("ignore", ConvergenceWarning)
        for C in LOGREG_CS:
            fold_loss, fold_accuracy = [], []
            for m, (tr, te) in zip(models, splits):
                m.set_params(C=C).fit(X[tr], y[tr])
                proba = m.predict_proba(X[te])
                fold_loss.append(log_loss(y[te], proba, labels=m.classes_))
                fold_accuracy.append(float(np.mean(m.classes_[proba.argmax(axis=1)] == y[te])))
            losses.append(float(np.mean(fold_loss)))
            accuracies.append(float(np.mean(fold_accuracy)))
            if losses[-1] < best:
                best, since_best = losses[-1], 0
            elif best < losses[0]:  # counted only once it has fallen: a flat small-C start is not a minimum
                since_best += 1
            if since_best >= LOGREG_SEARCH_PATIENCE:
                break
    pad = [None] * (len(LOGREG_CS) - len(losses))
    return [*losses, *pad], [*accuracies, *pad]


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


def _check_knn(options: ClassifierOptions, classifier: str, n_fit_rows: int) -> None:
    if classifier == "knn" and options.k_neighbors > n_fit_rows:
        raise ConfigError(f"--k-neighbors {options.k_neighbors} exceeds the {n_fit_rows} rows the model is fitted on")


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
