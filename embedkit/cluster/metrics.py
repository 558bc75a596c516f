"""How good a clustering is: silhouette on a sample and, given true labels, NMI and ARI."""

from __future__ import annotations

from typing import Any

import numpy as np

from .estimators import bounded_memory
from .fit import ClusterResult
from .preprocessing import sample_rows

SILHOUETTE_ROWS = 10_000


def cluster_metrics(result: ClusterResult, truth: np.ndarray | None, seed: int = 0) -> dict[str, Any]:
    """Silhouette (on a sample of ``SILHOUETTE_ROWS`` non-noise rows) and, given true labels, NMI and ARI.

    Rows whose true label is null (None) are left out of NMI/ARI; noise rows count as their own group there.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

    labels = result.labels
    members = np.flatnonzero(labels >= 0)
    metrics: dict[str, Any] = {"clusters": result.n_clusters, "noise_rows": int((labels < 0).sum())}
    rows = members[sample_rows(len(members), SILHOUETTE_ROWS, seed)]
    n_labels = len(np.unique(labels[rows]))
    with bounded_memory():
        metrics["silhouette"] = (
            round(float(silhouette_score(result.vectors[rows], labels[rows])), 4) if 1 < n_labels < len(rows) else None
        )
    metrics["silhouette_rows"] = int(len(rows))
    if truth is not None:
        known = np.array([t is not None for t in truth], dtype=bool)
        y = np.asarray([str(t) for t in truth[known]])
        metrics["labelled_rows"] = int(known.sum())
        metrics["label_classes"] = int(len(np.unique(y)))
        if known.any():
            metrics["nmi"] = round(float(normalized_mutual_info_score(y, labels[known])), 4)
            metrics["ari"] = round(float(adjusted_rand_score(y, labels[known])), 4)
    return metrics
