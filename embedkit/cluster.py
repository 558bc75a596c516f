"""Clustering of a features file: pre-processing, k choice, fit, summaries, metrics and a 2-D map.

The stage reads one embedding column of a Parquet written by ``embedkit embed`` and writes a directory:

* ``clusters.parquet``: ``id``, ``cluster`` (int32; -1 = noise, HDBSCAN only), ``distance`` (Euclidean
  distance to the cluster's centroid in the clustered space; null for noise) and any ``--keep`` columns;
* ``map.png``: a 2-D map of the clustered space coloured by cluster;
* ``summary.json``: sizes, most central texts, distinctive terms (c-TF-IDF), metrics, settings;
* ``embedkit_clusters.json``: the manifest (sha256 and size of every file), written last.

The directory follows the artefact protocol (:mod:`embedkit.artefact`): written under a lock, built aside and
switched in whole, so ``--overwrite`` keeps the old clustering until the new one is complete and two runs never
mix their files. :func:`load_clustering` reads one back, verified.

Pre-processing (measured; see ``benchmarks/cluster_quality.py`` and the README notes):

GPT-2 hidden states are strongly anisotropic: they share a large common component (raw cosine similarities
are all near 1) and a few "rogue" dimensions whose variance is orders of magnitude above the rest and carries
little meaning. K-means on such vectors splits along the rogue dimensions and ignores the content. The
defaults come from this measurement, with k-means (k = 43 categories, 5 seeds) on 3,726 Debian fortunes
embedded by all-MiniLM-L6-v2 (mean pooling, not normalised), and on "GPT-2-shaped" copies of the same vectors
(rotated into 768-d, plus a large common offset and three rogue dimensions with large, meaningless variance;
mean cosine 0.99):

=================================  =========  ===========
NMI against the categories          MiniLM     GPT-2-shaped
=================================  =========  ===========
raw                                 0.301      0.070
L2 only                             0.367      0.066
center + L2                         0.375      0.069
center + L2 + PCA 64                0.365      0.074
standardize + L2                    0.371      0.375
standardize + L2 + PCA 64 (default) 0.372      0.366
=================================  =========  ===========

1. ``standardize`` (on): subtract the mean and scale each dimension to unit variance. Centering alone removes
   the common component but not the rogue dimensions, and PCA then spends its components on them; the
   per-dimension scaling is what stops them from dominating (0.07 -> 0.37). On well-behaved
   sentence-transformer features it is neutral (within seed noise, about 0.01).
2. ``normalize`` (on): L2-normalise each row, so Euclidean k-means groups by direction (cosine), which is what
   sentence similarity means. On MiniLM features it is the largest single gain (0.30 -> 0.37).
3. ``pca`` (64 components, randomized solver fitted on a sample): 64 keeps the quality (32 costs 0.02, 16
   costs 0.06) and makes k-means, silhouette, HDBSCAN and the map several times faster on 768-d vectors. Use
   ``pca=0`` to cluster the full-dimensional vectors.

Scale: the pre-processing is fitted on a sample and applied in chunks, so the 768-d matrix is read once and
only the reduced matrix is kept. ``k="auto"`` fits the candidates on a sample only. Agglomerative clustering
(quadratic memory) and HDBSCAN (quadratic time in high dimension) are fitted on a sample of at most
``MAX_FIT_ROWS`` rows; every other row then joins the cluster of its nearest centroid (agglomerative) or of its
nearest fitted row (HDBSCAN, so noise stays noise).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import artefact
from .errors import ConfigError, InputError, choice_error
from .store import library_versions, open_features

log = logging.getLogger(__name__)

METHODS = ("kmeans", "minibatch-kmeans", "hdbscan", "agglomerative")
DEFAULT_METHOD = "kmeans"
MAP_METHODS = ("pca", "tsne", "umap", "none")
DEFAULT_MAP = "pca"
AUTO = "auto"
NOISE = -1

DEFAULT_PCA = 64
DEFAULT_K_RANGE = (2, 20)
DEFAULT_MIN_CLUSTER_SIZE = 10

# Sample sizes: big enough that the estimate is stable, small enough that the step takes seconds.
PREPROCESS_FIT_ROWS = 10_000  # mean, variance and PCA basis (64 of 768 components: 10k rows suffice)
AUTO_K_ROWS = 5_000  # candidates of k="auto" (silhouette is quadratic in rows)
SILHOUETTE_ROWS = 10_000
MAX_FIT_ROWS = 8_000  # agglomerative / HDBSCAN fit (ward keeps n^2/2 distances: 8,000 rows = 256 MB)
MAP_ROWS = {"pca": 20_000, "tsne": 5_000, "umap": 20_000}
CHUNK_ROWS = 8_192
# sklearn's pairwise helpers (silhouette, nearest centroid) size their chunks by this budget; its default of
# 1 GiB would dominate the stage's peak memory on big data.
WORKING_MEMORY_MIB = 128
CENTRAL_TEXTS = 5
TOP_TERMS = 10
TEXT_PREVIEW_CHARS = 200

FILE_CLUSTERS = "clusters.parquet"
FILE_SUMMARY = "summary.json"
FILE_MAP = "map.png"
MANIFEST = "embedkit_clusters.json"
KIND = "embedkit-clustering"
FORMAT_VERSION = 1
META_KEY = b"embedkit.cluster"


# ---------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class ClusterOptions:
    """How to cluster. Validated on creation; every unknown value raises ``ConfigError``.

    Args:
        method: one of ``METHODS``.
        k: number of clusters, or ``"auto"`` (silhouette over ``k_range`` on a sample). Ignored by HDBSCAN,
            which finds the number itself (an explicit number with HDBSCAN is an error).
        k_range: inclusive ``(min, max)`` candidates for ``k="auto"``.
        standardize: subtract the mean and scale each dimension to unit variance (see the module notes).
        center: subtract the mean (implied by ``standardize``; on its own when ``standardize`` is off).
        normalize: L2-normalise rows (after centering/scaling, before PCA).
        pca: PCA components (0 = no reduction). Clamped to the dimension and sample size.
        min_cluster_size: HDBSCAN's smallest cluster.
        seed: random seed for sampling, k-means initialisation, PCA and the map.
        map: 2-D map projection, one of ``MAP_METHODS``.
    """

    method: str = DEFAULT_METHOD
    k: int | str = AUTO
    k_range: tuple[int, int] = DEFAULT_K_RANGE
    standardize: bool = True
    center: bool = True
    normalize: bool = True
    pca: int = DEFAULT_PCA
    min_cluster_size: int = DEFAULT_MIN_CLUSTER_SIZE
    seed: int = 0
    map: str = DEFAULT_MAP

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise choice_error("clustering method", self.method, METHODS)
        if self.map not in MAP_METHODS:
            raise choice_error("map projection", self.map, MAP_METHODS)
        object.__setattr__(self, "k", parse_k(self.k))
        lo, hi = (int(v) for v in self.k_range)
        if not 2 <= lo <= hi:
            raise ConfigError(f"k range must satisfy 2 <= min <= max; got {lo}:{hi}")
        object.__setattr__(self, "k_range", (lo, hi))
        if self.method == "hdbscan" and self.k != AUTO:
            raise ConfigError(
                "hdbscan finds the number of clusters itself; drop --k and tune --min-cluster-size instead"
            )
        if self.pca < 0:
            raise ConfigError(f"pca must be >= 0 (0 = no reduction); got {self.pca}")
        if self.min_cluster_size < 2:
            raise ConfigError(f"min_cluster_size must be >= 2; got {self.min_cluster_size}")
        if self.map == "umap":
            _require_umap()

    @property
    def centers(self) -> bool:
        return self.center or self.standardize


def parse_k(value: int | str) -> int | str:
    """``"auto"`` or an integer >= 2 (strings of digits accepted, as the CLI passes them)."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"k must be 'auto' or an integer >= 2; got {value!r}") from None
    if k < 2:
        raise ConfigError(f"k must be 'auto' or an integer >= 2; got {k}")
    return k


def parse_k_range(value: str) -> tuple[int, int]:
    """``"MIN:MAX"`` -> ``(MIN, MAX)``."""
    try:
        lo, hi = (int(v) for v in str(value).split(":"))
    except ValueError:
        raise ConfigError(f"k range must look like MIN:MAX (e.g. 2:20); got {value!r}") from None
    return lo, hi


def _require_umap():
    try:
        import umap  # noqa: F401
    except ImportError:
        raise ConfigError(
            "map 'umap' needs the umap-learn package (pip install umap-learn); use 'pca' or 'tsne'"
        ) from None


# ---------------------------------------------------------------------------------------------- vectors


def _sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a uniform sample of ``min(n, size)`` rows (all rows when n <= size)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def build_preprocessor(options: ClusterOptions, n_rows: int, dim: int):
    """The sklearn pipeline of the pre-processing ``options`` ask for, or None when there is none."""
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    steps = []
    if options.centers:
        steps.append(("scale", StandardScaler(with_mean=True, with_std=options.standardize)))
    if options.normalize:
        steps.append(("normalize", Normalizer()))
    components = min(options.pca, dim, n_rows)
    if options.pca and components < dim:
        steps.append(("pca", PCA(components, svd_solver="randomized", random_state=options.seed)))
    return Pipeline(steps) if steps else None


def fit_preprocessor(sample: np.ndarray, n_rows: int, options: ClusterOptions):
    """Fit the pre-processing on ``sample`` (rows of a matrix of ``n_rows``). Returns ``(pipeline or None, info)``."""
    dim = sample.shape[1]
    pipeline = build_preprocessor(options, min(n_rows, len(sample)), dim)
    info: dict[str, Any] = {
        "standardize": options.standardize,
        "center": options.centers,
        "normalize": options.normalize,
        "pca": 0,
        "input_dim": dim,
        "dim": dim,
        "fit_rows": 0,
    }
    if pipeline is None:
        return None, info
    pipeline.fit(sample)
    info["fit_rows"] = int(len(sample))
    if "pca" in pipeline.named_steps:
        pca = pipeline.named_steps["pca"]
        info.update(
            dim=int(pca.n_components_),
            pca=int(pca.n_components_),
            explained_variance=round(float(pca.explained_variance_ratio_.sum()), 4),
        )
    return pipeline, info


def transform_into(pipeline, matrix: np.ndarray, out: np.ndarray) -> None:
    """Apply a fitted pre-processing to ``matrix`` chunk by chunk, writing into ``out`` (bounded temporaries)."""
    for start in range(0, len(matrix), CHUNK_ROWS):
        chunk = matrix[start : start + CHUNK_ROWS]
        out[start : start + len(chunk)] = chunk if pipeline is None else pipeline.transform(chunk)


def preprocess(matrix: np.ndarray, options: ClusterOptions) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit the pre-processing on a sample of an in-memory matrix and apply it to every row in chunks.

    Returns the matrix to cluster (float32) and a description of what was done.
    """
    n = len(matrix)
    pipeline, info = fit_preprocessor(matrix[_sample_rows(n, PREPROCESS_FIT_ROWS, options.seed)], n, options)
    if pipeline is None:
        return np.ascontiguousarray(matrix, dtype=np.float32), info
    out = np.empty((n, info["dim"]), dtype=np.float32)
    transform_into(pipeline, matrix, out)
    return out, info


def _finite_rows(matrix: np.ndarray) -> np.ndarray:
    return np.isfinite(matrix).all(axis=1)


def stream_preprocess(source, column: str, extra: list[str], options: ClusterOptions):
    """Read a features file in batches and pre-process it without holding the full-width matrix.

    Pass 1 draws a Bernoulli sample of about ``PREPROCESS_FIT_ROWS`` rows to fit the pre-processing (and counts
    the usable rows); pass 2 transforms every batch into the (usually much narrower) output matrix. When the
    whole file fits in the sample, it is read once. Rows with a null or non-finite embedding are skipped.

    Returns ``(vectors, table of id + extra, skipped_null, skipped_nonfinite, info)``.
    """
    rng = np.random.default_rng(options.seed)
    keep_share = min(1.0, PREPROCESS_FIT_ROWS / max(source.num_rows, 1))
    sample, tables, usable, nonfinite = [], [], 0, 0
    first_pass_extra = extra if keep_share >= 1.0 else []  # texts are only worth reading in the pass that keeps them
    for matrix, table in source.iter_batches(column, first_pass_extra, batch_rows=CHUNK_ROWS):
        finite = _finite_rows(matrix)
        nonfinite += int((~finite).sum())
        matrix = matrix[finite]
        usable += len(matrix)
        if keep_share >= 1.0:
            sample.append(matrix)
            tables.append(table.filter(pa.array(finite)))
        else:
            sample.append(matrix[rng.random(len(matrix)) < keep_share].copy())
    skipped_null = source.num_rows - usable - nonfinite
    if usable == 0:
        raise InputError(
            f"{source.path}: no row has a usable embedding in column {column!r} "
            f"({source.num_rows} rows: {skipped_null} null, {nonfinite} with NaN/inf)"
        )
    check_rows(usable, options)
    fit_sample = np.concatenate(sample)
    del sample
    pipeline, info = fit_preprocessor(fit_sample, usable, options)
    if keep_share >= 1.0:  # everything was read: transform the rows in hand
        vectors = np.empty((usable, info["dim"]), dtype=np.float32)
        transform_into(pipeline, fit_sample, vectors)
        return vectors, pa.concat_tables(tables), skipped_null, nonfinite, info
    del fit_sample
    vectors = np.empty((usable, info["dim"]), dtype=np.float32)
    position = 0
    for matrix, table in source.iter_batches(column, extra, batch_rows=CHUNK_ROWS):
        finite = _finite_rows(matrix)
        transform_into(pipeline, matrix[finite], vectors[position : position + int(finite.sum())])
        position += int(finite.sum())
        tables.append(table.filter(pa.array(finite)))
    return vectors, pa.concat_tables(tables), skipped_null, nonfinite, info


def check_rows(n: int, options: ClusterOptions) -> None:
    """Refuse row counts no clustering can be made of (fewer than 2 rows, or fewer rows than k)."""
    if n < 2:
        raise InputError(f"clustering needs at least 2 rows with an embedding; got {n}")
    if isinstance(options.k, int) and options.k > n:
        raise InputError(f"k={options.k} is larger than the {n} rows with an embedding; lower --k")


# ---------------------------------------------------------------------------------------------- fitting


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


def _fit_labels(vectors: np.ndarray, method: str, k: int | None, options: ClusterOptions) -> np.ndarray:
    """Fit ``method`` on ``vectors`` and return labels (int). Quadratic methods must get a sample."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        # Fewer distinct points than k: sklearn warns and still returns k labels; the summary shows the sizes.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return np.asarray(_make_estimator(method, k, options).fit_predict(vectors), dtype=np.int64)


def centroids_of(vectors: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """The mean vector of each cluster 0..n_clusters-1 (noise rows ignored)."""
    members = labels >= 0
    sums = np.zeros((n_clusters, vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, labels[members], vectors[members])
    counts = np.bincount(labels[members], minlength=n_clusters).astype(np.float64)
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)


def _nearest(queries: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of and Euclidean distance to the nearest of ``points`` for every query, in chunks."""
    from sklearn.metrics import pairwise_distances_argmin_min

    with _bounded_memory():
        return pairwise_distances_argmin_min(queries, points)


def _bounded_memory():
    import sklearn

    return sklearn.config_context(working_memory=WORKING_MEMORY_MIB)


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
        return _fit_labels(vectors, method, k, options)
    fit_rows = _sample_rows(n, MAX_FIT_ROWS, options.seed)
    sample_labels = _fit_labels(vectors[fit_rows], method, k, options)
    labels = np.empty(n, dtype=np.int64)
    if method == "agglomerative":
        # Ward merges by centroid distance, so the nearest centroid is the consistent way to place new rows.
        centroids = centroids_of(vectors[fit_rows], sample_labels, int(sample_labels.max()) + 1)
        labels[:] = _nearest(vectors, centroids)[0]
    else:
        # HDBSCAN clusters have arbitrary shapes and a noise label: take the label of the nearest fitted row.
        labels[:] = sample_labels[_nearest(vectors, vectors[fit_rows])[0]]
    labels[fit_rows] = sample_labels
    log.info("%s fitted on %d of %d rows; the rest joined their nearest cluster", method, len(fit_rows), n)
    return labels


def choose_k(vectors: np.ndarray, options: ClusterOptions, progress: bool = False) -> tuple[int, dict[int, float], int]:
    """Pick k by the best mean silhouette over ``options.k_range`` on a sample of ``AUTO_K_ROWS`` rows.

    Silhouette compares each row's distance to its own cluster with the nearest other cluster; the k with the
    highest mean wins (ties: the smaller k). It is computed on the same sample the candidates were fitted on,
    so the cost is bounded whatever the data size. Returns ``(k, {k: silhouette}, sample_rows)``.
    """
    from sklearn.metrics import silhouette_score
    from tqdm.auto import tqdm

    rows = _sample_rows(len(vectors), AUTO_K_ROWS, options.seed)
    sample = vectors[rows]
    lo, hi = options.k_range
    hi = min(hi, len(sample) - 1)
    if hi < lo:
        raise InputError(f"k auto needs more than {lo} rows with an embedding to compare candidates; got {len(sample)}")
    method = "kmeans" if options.method == "minibatch-kmeans" else options.method  # small sample: exact k-means
    scores: dict[int, float] = {}
    for k in tqdm(range(lo, hi + 1), desc="choosing k", unit="k", disable=not progress, leave=False):
        labels = _fit_labels(sample, method, k, options)
        with _bounded_memory():
            scores[k] = float(silhouette_score(sample, labels)) if 1 < len(np.unique(labels)) < len(sample) else -1.0
    best = max(scores, key=lambda c: (round(scores[c], 6), -c))
    return best, scores, len(rows)


# ---------------------------------------------------------------------------------------------- results


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


def cluster_metrics(result: ClusterResult, truth: np.ndarray | None, seed: int = 0) -> dict[str, Any]:
    """Silhouette (on a sample of ``SILHOUETTE_ROWS`` non-noise rows) and, given true labels, NMI and ARI.

    Rows whose true label is null (None) are left out of NMI/ARI; noise rows count as their own group there.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

    labels = result.labels
    members = np.flatnonzero(labels >= 0)
    metrics: dict[str, Any] = {"clusters": result.n_clusters, "noise_rows": int((labels < 0).sum())}
    rows = members[_sample_rows(len(members), SILHOUETTE_ROWS, seed)]
    n_labels = len(np.unique(labels[rows]))
    with _bounded_memory():
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


def distinctive_terms(
    texts: list[str | None], labels: np.ndarray, n_clusters: int, top: int = TOP_TERMS
) -> list[list[str]]:
    """The ``top`` most distinctive words of each cluster by class-based TF-IDF (c-TF-IDF, as in BERTopic).

    All texts of a cluster form one document; a term scores ``tf(term, cluster) * log(1 + A / f(term))`` where
    ``tf`` is its frequency in the cluster normalised by the cluster's word count, ``A`` the mean word count
    per cluster and ``f`` the term's count over all clusters: frequent in the cluster, rare elsewhere.
    English stop words are left out. Clusters with no usable words get an empty list.
    """
    from scipy import sparse
    from sklearn.feature_extraction.text import CountVectorizer

    keep = np.array([bool(t) and lab >= 0 for t, lab in zip(texts, labels)], dtype=bool)
    if not keep.any():
        return [[] for _ in range(n_clusters)]
    docs = [t for t, k in zip(texts, keep) if k]
    min_df = 2 if len(docs) >= 1_000 else 1  # drop one-off tokens (typos, ids) when there is enough text
    try:
        counts = CountVectorizer(stop_words="english", min_df=min_df).fit(docs)
    except ValueError:  # empty vocabulary: only stop words or punctuation
        return [[] for _ in range(n_clusters)]
    matrix = counts.transform(docs)
    kept_labels = labels[keep]
    indicator = sparse.csr_matrix(
        (np.ones(len(kept_labels)), (kept_labels, np.arange(len(kept_labels)))), shape=(n_clusters, len(kept_labels))
    )
    per_cluster = np.asarray((indicator @ matrix).todense(), dtype=np.float64)
    words = per_cluster.sum(axis=1, keepdims=True)
    tf = per_cluster / np.maximum(words, 1)
    idf = np.log1p(words.mean() / np.maximum(per_cluster.sum(axis=0), 1))
    scores = tf * idf
    vocab = counts.get_feature_names_out()
    out = []
    for row in scores:
        order = np.argsort(-row, kind="stable")[:top]
        out.append([str(vocab[i]) for i in order if row[i] > 0])
    return out


def _preview(text: Any) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= TEXT_PREVIEW_CHARS else flat[: TEXT_PREVIEW_CHARS - 1] + "…"


def describe_clusters(result: ClusterResult, texts: list | None, ids: list) -> list[dict[str, Any]]:
    """Per cluster: size, share, mean distance, the ids (and texts) of the most central rows, distinctive terms."""
    labels, distances = result.labels, result.distances
    terms = distinctive_terms(texts, labels, result.n_clusters) if texts is not None else None
    sizes = np.bincount(labels[labels >= 0], minlength=result.n_clusters)
    n = len(labels)
    clusters = []
    for c in range(result.n_clusters):
        rows = np.flatnonzero(labels == c)
        central = rows[np.argsort(distances[rows], kind="stable")[:CENTRAL_TEXTS]]
        entry: dict[str, Any] = {
            "cluster": c,
            "size": int(sizes[c]),
            "share": round(float(sizes[c]) / n, 4),
            "mean_distance": round(float(distances[rows].mean()), 4) if len(rows) else None,
            "central_ids": [ids[i] for i in central],
        }
        if texts is not None and terms is not None:  # terms exist exactly when texts do
            entry["central_texts"] = [_preview(texts[i]) for i in central if texts[i] is not None]
            entry["terms"] = terms[c]
        clusters.append(entry)
    noise = int((labels < 0).sum())
    if noise:
        clusters.append(
            {"cluster": NOISE, "size": noise, "share": round(noise / n, 4), "mean_distance": None, "central_ids": []}
        )
    return clusters


# ---------------------------------------------------------------------------------------------- map


def project_2d(vectors: np.ndarray, how: str, seed: int) -> np.ndarray:
    """A 2-D projection of ``vectors`` by PCA, t-SNE (sklearn) or UMAP (umap-learn, when installed)."""
    if len(vectors) < 3 or vectors.shape[1] < 2:
        return (
            np.column_stack([vectors[:, 0], np.zeros(len(vectors))])
            if vectors.shape[1]
            else np.zeros((len(vectors), 2))
        )
    if how == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(2, perplexity=min(30.0, (len(vectors) - 1) / 3), init="pca", random_state=seed).fit_transform(
            vectors
        )
    if how == "umap":
        import umap

        return umap.UMAP(n_components=2, random_state=seed).fit_transform(vectors)
    from sklearn.decomposition import PCA

    return PCA(2, random_state=seed).fit_transform(vectors)


def draw_map(result: ClusterResult, path: Path, how: str = DEFAULT_MAP, seed: int = 0, title: str = "") -> int:
    """Draw the 2-D map of a sample of rows coloured by cluster into a PNG (atomically). Returns rows drawn."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = _sample_rows(len(result.labels), MAP_ROWS[how], seed)
    xy = project_2d(result.vectors[rows], how, seed)
    labels = result.labels[rows]
    fig, ax = plt.subplots(figsize=(9, 7), dpi=110)
    try:
        noise = labels < 0
        if noise.any():
            ax.scatter(xy[noise, 0], xy[noise, 1], s=3, c="lightgrey", label="noise", linewidths=0)
        cmap = plt.get_cmap("tab20" if result.n_clusters <= 20 else "gist_ncar")
        colours = cmap(np.linspace(0, 1, max(result.n_clusters, 1), endpoint=result.n_clusters > 20))
        point_size = max(2.0, min(20.0, 4000 / max(len(rows), 1)))
        for c in range(result.n_clusters):
            mine = labels == c
            if not mine.any():
                continue
            ax.scatter(
                xy[mine, 0],
                xy[mine, 1],
                s=point_size,
                color=colours[c % len(colours)],
                label=str(c),
                linewidths=0,
                alpha=0.8,
            )
            cx, cy = np.median(xy[mine], axis=0)
            ax.annotate(
                str(c),
                (cx, cy),
                fontsize=9,
                weight="bold",
                ha="center",
                va="center",
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.7, "lw": 0},
            )
        if result.n_clusters <= 20:
            ax.legend(markerscale=3, fontsize=7, loc="best", title="cluster", frameon=False)
        ax.set_title(title or f"{len(rows):,} rows, {how.upper()} projection", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        with artefact.atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    return len(rows)


# ---------------------------------------------------------------------------------------------- files


def cluster_file(
    features: str | Path,
    output_dir: str | Path,
    options: ClusterOptions | None = None,
    *,
    column: str | None = None,
    label_column: str | None = None,
    text_column: str | None = None,
    keep: tuple[str, ...] | list[str] = (),
    overwrite: bool = False,
    progress: bool = False,
    wait: bool = False,
) -> dict[str, Any]:
    """Cluster the vectors of a features file and write ``clusters.parquet``, ``map.png`` and ``summary.json``.

    Args:
        features: a Parquet written by ``embedkit embed``.
        output_dir: directory to create (its parent must exist), an empty one, or one holding a clustering.
        options: how to cluster (defaults: k-means, k auto, standardize + L2 + PCA 64).
        column: embedding column (needed when the file has several).
        label_column: true labels for NMI/ARI.
        text_column: texts for central examples and terms; default ``text`` when the file has it.
        keep: columns copied into ``clusters.parquet``.
        overwrite: replace a finished clustering in ``output_dir`` (kept whole until the new one is complete).
        progress: show progress bars on stderr.
        wait: if another process is writing ``output_dir``, wait for it instead of raising BusyError.

    Returns:
        The summary (also written to ``summary.json``).

    Raises:
        InputError: missing file or column, no usable rows, k larger than the rows.
        OutputError: the directory cannot be written, holds a clustering (without ``overwrite``) or other files.
        BusyError: another process is writing ``output_dir`` (without ``wait``).
    """
    options = options or ClusterOptions()
    started = time.perf_counter()
    source = open_features(features)
    column = source.embedding_column(column)
    if text_column is None and "text" in source.schema.names:
        text_column = "text"
    keep = list(dict.fromkeys(keep))
    extra = [c for c in dict.fromkeys([*keep, *(c for c in (label_column, text_column) if c)]) if c != "id"]
    source.require_columns(extra)
    output_dir = Path(output_dir)
    # The lock is held from before the vectors are read until the switch: a second writer fails (or waits) at once.
    with artefact.writing_dir(
        output_dir,
        kind=KIND,
        manifest_name=MANIFEST,
        overwrite=overwrite,
        wait=wait,
        former_names=(FILE_CLUSTERS, FILE_MAP, FILE_SUMMARY),
    ) as stage:
        summary = _cluster_into(
            stage, source, column, options, label_column, text_column, keep, extra, progress, started
        )
    return summary


def _cluster_into(
    stage: artefact.Staging,
    source,
    column: str,
    options: ClusterOptions,
    label_column: str | None,
    text_column: str | None,
    keep: list[str],
    extra: list[str],
    progress: bool,
    started: float,
) -> dict[str, Any]:
    """The work of :func:`cluster_file`: every output file written into ``stage``, then sealed. Returns the summary."""
    t0 = time.perf_counter()
    vectors, table, skipped_null, skipped_nonfinite, info = stream_preprocess(source, column, extra, options)
    if skipped_null or skipped_nonfinite:
        log.warning("skipped %d rows with a null embedding and %d with NaN/inf values", skipped_null, skipped_nonfinite)
    result = cluster_prepared(vectors, info, options, progress, {"preprocess_s": time.perf_counter() - t0})

    ids = table.column("id").to_pylist()
    texts = table.column(text_column).to_pylist() if text_column else None
    truth = np.array(table.column(label_column).to_pylist(), dtype=object) if label_column else None
    t0 = time.perf_counter()
    metrics = cluster_metrics(result, truth, options.seed)
    clusters = describe_clusters(result, texts, ids)
    result.timings["summarise_s"] = time.perf_counter() - t0

    out_table = pa.table(
        {
            "id": table.column("id"),
            "cluster": pa.array(result.labels, type=pa.int32()),
            "distance": pa.array(result.distances, type=pa.float32(), from_pandas=True),  # NaN (noise) -> null
            **{c: table.column(c) for c in keep if c != "id"},
        }
    )
    settings = {"source": str(source.path), "column": column, "options": _options_dict(options)}
    out_table = out_table.replace_schema_metadata({META_KEY: json.dumps(settings).encode()})
    pq.write_table(out_table, stage.path(FILE_CLUSTERS))

    files: dict[str, Any] = {"clusters": FILE_CLUSTERS}
    if options.map != "none":
        t0 = time.perf_counter()
        title = f"{options.method}, {result.n_clusters} clusters, {options.map.upper()} map"
        map_rows = draw_map(result, stage.path(FILE_MAP), options.map, options.seed, title)
        result.timings["map_s"] = time.perf_counter() - t0
        files["map"] = FILE_MAP
        files["map_rows"] = map_rows

    result.timings["total_s"] = time.perf_counter() - started
    notes = _notes(source, options, metrics, len(result.labels), text_column)
    for note in notes:
        log.info(note)
    summary = {
        "source": str(source.path),
        "column": column,
        "model": source.meta.get("model", {}).get("name"),
        "rows": source.num_rows,
        "clustered_rows": len(result.labels),
        "skipped_rows": {"null_embedding": skipped_null, "non_finite": skipped_nonfinite},
        "method": options.method,
        "k": result.k,
        "options": _options_dict(options),
        "preprocessing": result.preprocessing,
        "k_selection": result.k_selection,
        "label_column": label_column,
        "text_column": text_column,
        "metrics": metrics,
        "clusters": clusters,
        "files": files,
        "notes": notes,
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions("scikit-learn", "numpy", "pyarrow"),
    }
    stage.path(FILE_SUMMARY).write_text(
        json.dumps(summary, indent=2, ensure_ascii=False, default=_json_default), encoding="utf-8"
    )
    # The manifest repeats what a reader checks the files against: the row count of clusters.parquet and k.
    stage.seal(
        {
            "format_version": FORMAT_VERSION,
            "summary": FILE_SUMMARY,
            "clusters": FILE_CLUSTERS,
            "rows": len(result.labels),
            "k": result.n_clusters,
            "created_at": summary["created_at"],
        }
    )
    return summary


@dataclass(frozen=True)
class Clustering:
    """A clustering directory read back and verified: its summary and the path of its table."""

    directory: Path
    summary: dict[str, Any]
    clusters_path: Path
    rows: int
    k: int

    def table(self) -> pa.Table:
        """``clusters.parquet`` (id, cluster, distance, keep columns)."""
        return pq.read_table(self.clusters_path)


def load_clustering(directory: str | Path) -> Clustering:
    """Open a directory written by :func:`cluster_file`, verifying every file against its manifest first.

    Raises:
        InputError: not a complete clustering directory; a file missing, symlinked, or not matching its sha256; a
            manifest field (naming it) or summary of the wrong shape; a table whose row count is not the manifest's.
    """
    directory = Path(directory)
    opened = artefact.open_dir(directory, manifest_name=MANIFEST, what="clustering")
    manifest = opened.manifest
    where = directory / MANIFEST

    def bad(name: str, problem: str) -> InputError:
        return InputError(f"{where}: field {name!r} {problem}; the clustering is corrupt or was edited by hand")

    if manifest.get("kind") != KIND or manifest.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{directory}: unsupported clustering format (kind {manifest.get('kind')!r}, version "
            f"{manifest.get('format_version')!r})"
        )
    for name, expected in (("summary", FILE_SUMMARY), ("clusters", FILE_CLUSTERS)):
        if manifest.get(name) != expected:
            raise bad(name, f"must be {expected!r}")
    for name in ("rows", "k"):
        value = manifest.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise bad(name, f"must be a count, got {value!r}")
    try:
        summary = json.loads(opened.path(FILE_SUMMARY).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"{directory / FILE_SUMMARY} is not readable JSON: {exc}") from exc
    if not isinstance(summary, dict):
        raise InputError(f"{directory / FILE_SUMMARY} is not a JSON object; the clustering is corrupt")
    clusters_path = opened.path(FILE_CLUSTERS)
    try:
        rows = pq.ParquetFile(clusters_path).metadata.num_rows
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{clusters_path}: corrupt or unreadable Parquet: {exc}") from exc
    if rows != manifest["rows"]:
        raise bad("rows", f"says {manifest['rows']} but {FILE_CLUSTERS} holds {rows}")
    return Clustering(directory, summary, clusters_path, rows, manifest["k"])


def _notes(source, options: ClusterOptions, metrics: dict[str, Any], rows: int, text_column: str | None) -> list[str]:
    """Outcomes a user would otherwise misread: mostly-noise HDBSCAN, summaries without texts."""
    notes = []
    noise = metrics.get("noise_rows", 0)
    if options.method == "hdbscan" and noise * 2 >= rows:
        notes.append(
            f"hdbscan marked {noise:,} of {rows:,} rows as noise ({metrics['clusters']} clusters): density is thin in "
            f"embedding space; lower --min-cluster-size (now {options.min_cluster_size}) or use --method kmeans"
        )
    if text_column is None and source.text_columns:
        notes.append(
            "no 'text' column: clusters are described by ids only; pass --text-column COLUMN for central "
            f"texts and distinctive terms (text columns here: {', '.join(source.text_columns)})"
        )
    return notes


def _options_dict(options: ClusterOptions) -> dict[str, Any]:
    d = asdict(options)
    d["k_range"] = list(d["k_range"])
    return d


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def format_summary(summary: dict[str, Any], max_clusters: int = 50) -> str:
    """The summary as a plain-text table for the terminal."""
    m = summary["metrics"]
    lines = [
        f"{summary['clustered_rows']:,} rows clustered by {summary['method']} into {m['clusters']} clusters"
        + (
            f" (k chosen by silhouette over {summary['k_selection']['range'][0]}..{summary['k_selection']['range'][1]})"
            if summary.get("k_selection")
            else ""
        ),
    ]
    skipped = summary["skipped_rows"]
    if skipped["null_embedding"] or skipped["non_finite"]:
        lines.append(
            f"skipped {skipped['null_embedding']} rows with a null embedding, {skipped['non_finite']} with NaN/inf"
        )
    scores = [f"silhouette {m['silhouette']:.3f}" if m.get("silhouette") is not None else "silhouette n/a"]
    scores += [f"{name.upper()} {m[name]:.3f}" for name in ("nmi", "ari") if name in m]
    if m.get("noise_rows"):
        scores.append(f"noise {m['noise_rows']:,} rows")
    lines.append(", ".join(scores))
    has_text = summary.get("text_column") is not None
    lines.append(
        f"{'cluster':>7}  {'size':>8}  {'share':>6}  "
        + ("terms / most central text" if has_text else "most central ids")
    )
    for c in summary["clusters"][:max_clusters]:
        name = "noise" if c["cluster"] == NOISE else str(c["cluster"])
        head = f"{name:>7}  {c['size']:>8,}  {c['share'] * 100:5.1f}%  "
        if has_text and c["cluster"] != NOISE:
            lines.append(head + ", ".join(c.get("terms") or []))
            central = c.get("central_texts") or []
            if central:
                lines.append(" " * 28 + "« " + central[0][:100] + " »")
        else:
            lines.append(head + ", ".join(map(str, c["central_ids"][:5])))
    if len(summary["clusters"]) > max_clusters:
        lines.append(f"... {len(summary['clusters']) - max_clusters} more clusters in summary.json")
    lines += [f"note: {note}" for note in summary.get("notes", [])]
    return "\n".join(lines)


__all__ = [
    "METHODS",
    "MAP_METHODS",
    "ClusterOptions",
    "ClusterResult",
    "Clustering",
    "cluster_file",
    "cluster_metrics",
    "cluster_vectors",
    "choose_k",
    "distinctive_terms",
    "draw_map",
    "format_summary",
    "load_clustering",
    "parse_k",
    "parse_k_range",
    "preprocess",
]
