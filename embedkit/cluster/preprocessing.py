"""Pre-processing before clustering: standardise, L2-normalise, PCA; fitted on a sample, applied in chunks.

Why these defaults (the measurement, NMI against fortune categories on MiniLM and GPT-2-shaped vectors, is in
docs/cluster.md, "Pre-processing defaults, and why"):

1. ``standardize`` (on): GPT-2 hidden states share a large common component and a few "rogue" dimensions of
   huge, meaningless variance; centering removes the first, only the per-dimension scaling stops the second
   from dominating k-means and PCA. Neutral on sentence-transformer features.
2. ``normalize`` (on): L2 rows, so Euclidean k-means groups by direction (cosine), what sentence similarity
   means; the largest single gain on MiniLM features.
3. ``pca`` (64 components, randomized solver fitted on a sample): keeps the quality and makes k-means,
   silhouette, HDBSCAN and the map several times faster on 768-d vectors; ``pca=0`` keeps every dimension.

Scale: the pre-processing is fitted on a sample and applied in chunks, so the 768-d matrix is read once and
only the reduced matrix is kept. ``k="auto"`` fits the candidates on a sample only. Agglomerative clustering
(quadratic memory) and HDBSCAN (quadratic time in high dimension) are fitted on a sample of at most
``MAX_FIT_ROWS`` rows; every other row then joins the cluster of its nearest centroid (agglomerative) or of its
nearest fitted row (HDBSCAN, so noise stays noise).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import InputError
from .options import ClusterOptions

# Sample sizes: big enough that the estimate is stable, small enough that the step takes seconds.
PREPROCESS_FIT_ROWS = 10_000  # mean, variance and PCA basis (64 of 768 components: 10k rows suffice)
CHUNK_ROWS = 8_192


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
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
    pipeline, info = fit_preprocessor(matrix[sample_rows(n, PREPROCESS_FIT_ROWS, options.seed)], n, options)
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
