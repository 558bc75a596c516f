"""Thin helpers over FAISS: metric, vector preparation, reaching wrapped IVF/HNSW indexes, creating and
training an index from a plan, exact (brute-force) search over the stored vectors."""

from __future__ import annotations

import logging

import numpy as np

from ..errors import ConfigError, InputError
from .plan import (
    IVF_KMEANS_ITERATIONS,
    IVF_TRAIN_ROWS_PER_LIST,
    OPQ_ITERATIONS,
    PQ_CODES,
    PQ_KMEANS_ITERATIONS,
    PQ_TRAIN_ROWS,
    IndexPlan,
)

log = logging.getLogger(__name__)


def _faiss():
    import faiss

    return faiss


def _metric_type(metric: str) -> int:
    faiss = _faiss()
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def _prepare(matrix: np.ndarray, metric: str) -> np.ndarray:
    """float32, C-contiguous, unit length for cosine (FAISS then ranks by inner product)."""
    x = np.ascontiguousarray(matrix, dtype=np.float32)
    if metric == "cosine":
        x = x.copy() if x is matrix else x
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        np.divide(x, np.maximum(norms, 1e-12), out=x)
    return x


def _ivf_of(index):
    faiss = _faiss()
    try:
        # extract_index_ivf hands back the IndexIVF base class; downcast so IVF-PQ's own fields (pq) are reachable.
        return faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:
        return None


def _hnsw_of(index):
    faiss = _faiss()
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
    return inner if isinstance(inner, faiss.IndexHNSW) else None


def apply_params(index, params: dict[str, int]) -> None:
    """Set search-time knobs (nprobe, efSearch) through FAISS's ParameterSpace (it reaches wrapped indexes)."""
    faiss = _faiss()
    space = faiss.ParameterSpace()
    for name, value in params.items():
        if name == "nprobe" and _ivf_of(index) is None or name == "efSearch" and _hnsw_of(index) is None:
            raise ConfigError(f"{name} does not apply to this index ({type(index).__name__})")
        space.set_index_parameter(index, name, int(value))
        if name == "nprobe":
            ivf = _ivf_of(index)
            quantizer = faiss.downcast_index(ivf.quantizer)
            if isinstance(quantizer, faiss.IndexHNSW):
                # The HNSW over centroids must look at least as wide as the lists it is asked to return.
                quantizer.hnsw.efSearch = max(2 * int(value), 64)


def _usable_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows FAISS can rank: no NaN or infinity, and a squared norm that fits float32.

    embed's writer turns an infinity into float32's largest value, whose square overflows FAISS's float32
    distances (and the cosine normalisation) just as an infinity would; one check catches all three.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        return np.isfinite(np.einsum("ij,ij->i", matrix, matrix, dtype=np.float32))


def _new_index(plan: IndexPlan, dim: int, metric: str, train: np.ndarray):
    faiss = _faiss()
    try:
        index = faiss.index_factory(dim, plan.factory, _metric_type(metric))
    except RuntimeError as exc:
        raise ConfigError(f"FAISS cannot build {plan.factory!r} for dimension {dim}: {exc}") from exc
    ivf = _ivf_of(index)
    if ivf is not None:
        ivf.cp.niter = IVF_KMEANS_ITERATIONS
        # We sample IVF_TRAIN_ROWS_PER_LIST rows per list on purpose (k-means time); say so instead of warning.
        ivf.cp.min_points_per_centroid = min(IVF_TRAIN_ROWS_PER_LIST, ivf.cp.min_points_per_centroid)
        if hasattr(ivf, "pq"):
            ivf.pq.cp.niter = PQ_KMEANS_ITERATIONS
            # FAISS warns once per sub-quantizer (up to 64 identical lines, past --quiet) when the sample is under
            # 39 rows per code; one warning of ours says it once, with what to do.
            wanted = PQ_CODES * ivf.pq.cp.min_points_per_centroid
            if 0 < len(train) < wanted:
                log.warning(
                    "IVF-PQ codebooks trained on %d rows (%d wanted): expect lower recall; with this few "
                    "rows --kind ivf or flat is exact enough and fast",
                    len(train),
                    wanted,
                )
            ivf.pq.cp.min_points_per_centroid = 1
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            transform = faiss.downcast_VectorTransform(index.chain.at(i))
            if isinstance(transform, faiss.OPQMatrix):
                transform.niter = OPQ_ITERATIONS
                transform.max_train_points = PQ_TRAIN_ROWS
    if not index.is_trained:
        if len(train) < max(1, plan.nlist):
            raise InputError(f"{len(train)} rows are too few to train {plan.factory}; use --kind flat or hnsw")
        if plan.pq_bytes and len(train) < PQ_CODES:
            raise InputError(
                f"{len(train)} rows are too few to train product quantization ({PQ_CODES} needed); use --kind ivf"
            )
        index.train(train)
    return index


EXACT_CHUNK_ROWS = 65536  # stored vectors decoded at a time by exact search (bounds its memory)

_NO_VECTORS = "this index (ivfpq) keeps compressed codes, not the vectors: exact search is not possible"


def _exact_search(
    index, queries: np.ndarray, k: int, metric: str, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The true top-k of ``queries`` among the vectors ``index`` stores (only the ``allowed`` rows, if given)."""
    faiss = _faiss()
    ivf = _ivf_of(index)
    if isinstance(index, faiss.IndexPreTransform) or "PQ" in type(ivf if ivf is not None else index).__name__:
        raise ConfigError(_NO_VECTORS)
    if ivf is not None:
        ivf.make_direct_map()  # in memory only: lets the lists be read back by position
    heap = faiss.ResultHeap(len(queries), k, keep_max=metric != "l2")
    if allowed is None:
        for start in range(0, index.ntotal, EXACT_CHUNK_ROWS):
            stored = index.reconstruct_n(start, min(EXACT_CHUNK_ROWS, index.ntotal - start))
            d, i = faiss.knn(queries, stored, min(k, len(stored)), metric=_metric_type(metric))
            heap.add_result(_pad(d, k, metric), _pad_ids(i + start, k))
    else:
        rows = np.flatnonzero(allowed).astype(np.int64)
        for start in range(0, len(rows), EXACT_CHUNK_ROWS):
            chunk = rows[start : start + EXACT_CHUNK_ROWS]
            stored = index.reconstruct_batch(chunk)
            d, i = faiss.knn(queries, stored, min(k, len(stored)), metric=_metric_type(metric))
            heap.add_result(_pad(d, k, metric), _pad_ids(np.where(i >= 0, chunk[np.maximum(i, 0)], -1), k))
    heap.finalize()
    return heap.D, heap.I


def _pad(d: np.ndarray, k: int, metric: str) -> np.ndarray:
    if d.shape[1] == k:
        return d
    fill = np.inf if metric == "l2" else -np.inf
    return np.concatenate([d, np.full((d.shape[0], k - d.shape[1]), fill, dtype=d.dtype)], axis=1)


def _pad_ids(i: np.ndarray, k: int) -> np.ndarray:
    if i.shape[1] == k:
        return i
    return np.concatenate([i, np.full((i.shape[0], k - i.shape[1]), -1, dtype=i.dtype)], axis=1)
