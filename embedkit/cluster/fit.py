"""Fitting: labels for every row (quadratic methods on a sample), centroids and distances to them."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .estimators import fit_labels, nearest
from .k_selection import choose_k
from .options import AUTO, ClusterOptions
from .preprocessing import CHUNK_ROWS, check_rows, preprocess, sample_rows

log = logging.getLogger(__name__)

MAX_FIT_ROWS = 8_000  # agglomerative / HDBSCAN fit (ward keeps n^2/2 distances: 8,000 rows = 256 MB)


def centroids_of(vectors: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """The mean vector of each cluster 0..n_clusters-1 (noise rows ignored)."""
    members = labels >= 0
    sums = np.zeros((n_clusters, vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, labels[members], vectors[members])
    counts = np.bincount(labels[members], minlength=n_clusters).astype(np.float64)
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)


def fit_clusters(vectors: np.ndarray, method: str, k: int | None, options: ClusterOptions) -> np.ndarray:
    """Labels for every row; quadratic methods are fitted on a sample and extended to the rest.

    Args:
        vectors: the pre-processed matrix.
        method: one of ``METHODS``.
        k: number of clusters (None for HDBSCAN).
        options: seed and HDBSCAN settings.
    """
    n = len(vectors)
    if method in ("kmeans", "minibatch-kmeans") or n <= MAX_FIT_ROWS:
        return fit_labels(vectors, method, k, options)
    fit_rows = sample_rows(n, MAX_FIT_ROWS, options.seed)
    sample_labels = fit_labels(vectors[fit_rows], method, k, options)
    labels = np.empty(n, dtype=np.int64)
    if method == "agglomerative":
        # Ward merges by centroid distance, so the nearest centroid is the consistent way to place new rows.
        centroids = centroids_of(vectors[fit_rows], sample_labels, int(sample_labels.max()) + 1)
        labels[:] = nearest(vectors, centroids)[0]
    else:
        # HDBSCAN clusters have arbitrary shapes and a noise label: take the label of the nearest fitted row.
        labels[:] = sample_labels[nearest(vectors, vectors[fit_rows])[0]]
    labels[fit_rows] = sample_labels
    log.info("%s fitted on %d of %d rows; the rest joined their nearest cluster", method, len(fit_rows), n)
    return labels


@dataclass
class ClusterResult:
    """In-memory clustering of one matrix: labels, distances to centroids and how they were obtained."""

    labels: np.ndarray
    distances: np.ndarray
    vectors: np.ndarray
    centroids: np.ndarray
    k: int
    preprocessing: dict[str, Any]
    k_selection: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_clusters(self) -> int:
        return len(self.centroids)


def cluster_vectors(matrix: np.ndarray, options: ClusterOptions | None = None, progress: bool = False) -> ClusterResult:
    """Pre-process and cluster an in-memory [n, d] matrix.

    Raises:
        InputError: too few rows for the requested k (or to choose one).
    """
    options = options or ClusterOptions()
    check_rows(len(matrix), options)
    t0 = time.perf_counter()
    vectors, info = preprocess(matrix, options)
    return cluster_prepared(vectors, info, options, progress, {"preprocess_s": time.perf_counter() - t0})


def cluster_prepared(
    vectors: np.ndarray,
    info: dict[str, Any],
    options: ClusterOptions,
    progress: bool = False,
    timings: dict[str, float] | None = None,
) -> ClusterResult:
    """Cluster already pre-processed vectors (``info`` describes the pre-processing)."""
    timings = dict(timings or {})
    k: int | None = None  # HDBSCAN finds the number of clusters itself
    selection = None
    if options.method != "hdbscan" and isinstance(options.k, int):
        k = options.k
    elif options.method != "hdbscan" and options.k == AUTO:
        t0 = time.perf_counter()
        k, scores, rows = choose_k(vectors, options, progress)
        selection = {
            "criterion": "silhouette",
            "sample_rows": rows,
            "range": list(options.k_range),
            "scores": scores,
            "chosen": k,
        }
        timings["choose_k_s"] = time.perf_counter() - t0
        log.info("k=auto chose k=%d (silhouette %.3f)", k, scores[k])
    t0 = time.perf_counter()
    labels = fit_clusters(vectors, options.method, k, options)
    timings["fit_s"] = time.perf_counter() - t0
    n_clusters = k if k is not None else int(labels.max()) + 1 if (labels >= 0).any() else 0
    centroids = centroids_of(vectors, labels, n_clusters)
    return ClusterResult(
        labels,
        distances_to_centroids(vectors, labels, centroids),
        vectors,
        centroids,
        n_clusters,
        info,
        selection,
        timings,
    )


def distances_to_centroids(vectors: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Euclidean distance of each row to its cluster's centroid (NaN for noise), in chunks."""
    distances = np.full(len(vectors), np.nan, dtype=np.float32)
    for start in range(0, len(vectors), CHUNK_ROWS):
        part, mine = vectors[start : start + CHUNK_ROWS], labels[start : start + CHUNK_ROWS]
        members = mine >= 0
        distances[start : start + CHUNK_ROWS][members] = np.linalg.norm(
            part[members] - centroids[mine[members]], axis=1
        )
    return distances
