"""The sklearn estimators behind each method, and the memory bound of sklearn's pairwise helpers."""

from __future__ import annotations

import numpy as np

from .options import ClusterOptions

# sklearn's pairwise helpers (silhouette, nearest centroid) size their chunks by this budget; its default of
# 1 GiB would dominate the stage's peak memory on big data.
WORKING_MEMORY_MIB = 128


def _make_estimator(method: str, k: int | None, options: ClusterOptions):
    from sklearn.cluster import HDBSCAN, AgglomerativeClustering, KMeans, MiniBatchKMeans

    if method == "kmeans":
        # Three k-means++ starts: one start alone gives NMI swings of about 0.01 between seeds.
        return KMeans(k, n_init=3, random_state=options.seed)
    if method == "minibatch-kmeans":
        return MiniBatchKMeans(k, n_init=3, batch_size=4096, random_state=options.seed)
    if method == "agglomerative":
        return AgglomerativeClustering(k, linkage="ward")
    return HDBSCAN(min_cluster_size=options.min_cluster_size, copy=True)


def fit_labels(vectors: np.ndarray, method: str, k: int | None, options: ClusterOptions) -> np.ndarray:
    """Fit ``method`` on ``vectors`` and return labels (int). Quadratic methods must get a sample."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        # Fewer distinct points than k: sklearn warns and still returns k labels; the summary shows the sizes.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return np.asarray(_make_estimator(method, k, options).fit_predict(vectors), dtype=np.int64)


def nearest(queries: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of and Euclidean distance to the nearest of ``points`` for every query, in chunks."""
    from sklearn.metrics import pairwise_distances_argmin_min

    with bounded_memory():
        return pairwise_distances_argmin_min(queries, points)


def bounded_memory():
    import sklearn

    return sklearn.config_context(working_memory=WORKING_MEMORY_MIB)
