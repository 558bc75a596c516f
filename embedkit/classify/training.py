"""``train``: fit a classifier on a features file, evaluate it (hold-out, K-fold CV or none), and write the model
directory."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import artefact
from ..errors import ConfigError, choice_error
from .data import TrainingData, check_classes, load_training_data
from .files import CONFUSION_PNG, EVAL_PREDICTIONS, MANIFEST, METRICS_FILE, MODEL_FILE, MODEL_KIND, _write_model_dir
from .fit import _check_knn, cross_validate, fit_classifier, settled
from .metrics import _jsonable, chosen_note, evaluate, fitted_on, format_report
from .options import CLASSIFIERS, DEFAULT_CLASSIFIER, DEFAULT_TEST_SIZE, RIDGE_ALPHAS, ClassifierOptions


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
            from ..audit.groups import format_groups  # the audit package loads torch: only when groups were asked

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
    from ..audit.groups import group_metrics

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
        # Its CV score: the mean leave-one-out squared error of the +-1 class targets (lower is better).
        metrics["chosen_alpha_loo_error"] = -float(estimator[-1].best_score_)
    if len(evaluated):
        metrics.update(evaluate(data.y[evaluated], eval_pred[evaluated], classes))
    return estimator, metrics, evaluated, eval_pred, fold
