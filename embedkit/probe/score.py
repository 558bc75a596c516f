"""Scoring: the cross-validated linear probe of ``embedkit train --cv`` on each (layer, pooling) column."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..classify import DEFAULT_CLASSIFIER, ClassifierOptions, check_classes, cross_validate, load_training_data
from ..errors import ConfigError, choice_error
from ..store import open_features

DEFAULT_CV = 5
METRICS = ("macro-f1", "accuracy", "nmi")
DEFAULT_METRIC = "macro-f1"
# A fixed C, not train's cross-validated choice: the probe compares layers with one yardstick, and a search per
# fold per (layer, pooling) would multiply its cost by the grid.
PROBE_OPTIONS = ClassifierOptions(C=1.0, standardize=True)


@dataclass
class PairScore:
    """The probe's scores for one (layer, pooling) column."""

    layer: int
    pooling: str
    column: str
    fold_accuracy: list[float]
    fold_macro_f1: list[float]
    accuracy: float  # over all out-of-fold predictions, as `embedkit train --cv` reports it
    macro_f1: float
    rows: int
    nmi: float | None = None

    @property
    def accuracy_mean(self) -> float:
        return float(np.mean(self.fold_accuracy))

    @property
    def accuracy_std(self) -> float:
        return float(np.std(self.fold_accuracy))

    @property
    def macro_f1_mean(self) -> float:
        return float(np.mean(self.fold_macro_f1))

    @property
    def macro_f1_std(self) -> float:
        return float(np.std(self.fold_macro_f1))

    def score(self, metric: str) -> float:
        value = {"accuracy": self.accuracy_mean, "macro-f1": self.macro_f1_mean, "nmi": self.nmi}[metric]
        if value is None:  # probe_file refuses metric "nmi" without nmi=True; only a direct caller gets here
            raise ConfigError(f"no {metric} score: it is computed only with nmi=True")
        return value

    def row(self) -> dict[str, Any]:
        """The CSV/JSON table row."""
        row = {
            "layer": self.layer,
            "pooling": self.pooling,
            "column": self.column,
            "accuracy_mean": round(self.accuracy_mean, 4),
            "accuracy_std": round(self.accuracy_std, 4),
            "macro_f1_mean": round(self.macro_f1_mean, 4),
            "macro_f1_std": round(self.macro_f1_std, 4),
            "accuracy_oof": round(self.accuracy, 4),
            "macro_f1_oof": round(self.macro_f1, 4),
            "rows": self.rows,
        }
        if self.nmi is not None:
            row["nmi"] = round(self.nmi, 4)
        return row


def score_vectors(
    X: np.ndarray,
    y: np.ndarray,
    *,
    cv: int = DEFAULT_CV,
    seed: int = 0,
    options: ClassifierOptions | None = None,
    nmi: bool = False,
) -> dict[str, Any]:
    """Cross-validated linear-probe scores of one matrix: the splits and classifier of ``embedkit train --cv``.

    Returns per-fold accuracy and macro-F1, the out-of-fold accuracy and macro-F1, and with ``nmi`` the NMI
    between the labels and a k-means clustering (k = number of classes) made by the cluster stage.
    """
    from sklearn.metrics import accuracy_score, f1_score

    classes = sorted(set(y.tolist()))
    predicted, fold = cross_validate(X, y, DEFAULT_CLASSIFIER, options or PROBE_OPTIONS, cv=cv, seed=seed)
    scores: dict[str, Any] = {"fold_accuracy": [], "fold_macro_f1": []}
    for k in range(cv):
        te = fold == k
        scores["fold_accuracy"].append(float(accuracy_score(y[te], predicted[te])))
        scores["fold_macro_f1"].append(
            float(f1_score(y[te], predicted[te], labels=classes, average="macro", zero_division=0))
        )
    scores["accuracy"] = float(accuracy_score(y, predicted))
    scores["macro_f1"] = float(f1_score(y, predicted, labels=classes, average="macro", zero_division=0))
    if nmi:
        from ..cluster import ClusterOptions, cluster_metrics, cluster_vectors

        result = cluster_vectors(X, ClusterOptions(k=max(2, min(len(classes), len(X))), seed=seed, map="none"))
        scores["nmi"] = float(cluster_metrics(result, y.astype(object), seed=seed)["nmi"])
    return scores


def score_features(
    features: str | Path,
    label_column: str,
    *,
    cv: int = DEFAULT_CV,
    seed: int = 0,
    nmi: bool = False,
    options: ClassifierOptions | None = None,
    progress: bool = False,
) -> tuple[list[PairScore], dict[str, int]]:
    """Score every embedding column of a features file; also returns the rows skipped when loading.

    Raises:
        InputError: missing label column (the message lists the columns), a class too small for ``cv`` folds.
    """
    from tqdm.auto import tqdm

    feats = open_features(features)
    pairs = list(zip(feats.config.column_names(), feats.config.pairs))
    results: list[PairScore] = []
    skipped: dict[str, int] = {}
    with tqdm(total=len(pairs), unit=" pairs", file=sys.stderr, disable=not progress, desc="probe") as bar:
        for column, (layer, pooling) in pairs:
            bar.set_postfix_str(f"layer {layer} {pooling}", refresh=True)
            data = load_training_data(feats, label_column, column)
            if not results:
                check_classes(data.class_counts, label_column, cv=cv, test_size=0)
                skipped = {"null_embedding": data.skipped_null_embeddings, "missing_label": data.skipped_null_labels}
            s = score_vectors(data.X, data.y, cv=cv, seed=seed, options=options, nmi=nmi)
            results.append(
                PairScore(
                    layer=layer,
                    pooling=pooling,
                    column=column,
                    fold_accuracy=s["fold_accuracy"],
                    fold_macro_f1=s["fold_macro_f1"],
                    accuracy=s["accuracy"],
                    macro_f1=s["macro_f1"],
                    rows=len(data.y),
                    nmi=s.get("nmi"),
                )
            )
            bar.update(1)
    return results, skipped


def best_pair(scores: list[PairScore], metric: str = DEFAULT_METRIC) -> PairScore:
    """The highest-scoring pair; ties go to the shallower layer (cheaper: later blocks need not run)."""
    if metric not in METRICS:
        raise choice_error("probe metric", metric, METRICS)
    return max(scores, key=lambda s: (round(s.score(metric), 6), -s.layer))
