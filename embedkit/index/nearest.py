"""The nearest rows of query vectors in a loaded index (:class:`~embedkit.index.search.Index`): ``k`` clamped to
what can be returned, deleted rows and ``--where`` as a mask of allowed rows, exact comparison for few allowed rows
or on request, per-call search knobs, and the re-ranking of candidates by float vectors (:mod:`.rescore`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError, IncompatibleError, InputError
from .faiss_ops import _exact_search, _ivf_of, _prepare, _usable_rows, apply_params
from .live import Selection
from .result import SearchResult, _exclude

if TYPE_CHECKING:
    from .search import Index

log = logging.getLogger(__name__)


def nearest(
    index: Index,
    vectors: np.ndarray,
    k: int,
    *,
    nprobe: int | None,
    ef_search: int | None,
    exclude: np.ndarray | None,
    exact: bool,
    where: str | None,
    rescore: bool,
    exact_filter_rows: int,
) -> SearchResult:
    """``Index.search_vectors`` (see there); ``exact_filter_rows``: allowed rows up to which a filtered search
    compares each of them instead of searching the index."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    if vectors.ndim != 2 or vectors.shape[1] != index.dim:
        raise IncompatibleError(f"query vectors have shape {vectors.shape}; this index holds {index.dim}-d vectors")
    if not _usable_rows(vectors).all():
        raise InputError("query vectors hold NaN, infinite or overflowing values")
    allowed = index.live()
    extra = 0 if exclude is None else 1
    fallback = False
    if where is not None:
        matching = index.matching(where)
        allowed = matching if allowed is None else allowed & matching
        if not allowed.any():  # nothing matches: an empty answer, not an error
            note = f"no row matches --where {where!r}"
            empty = np.empty((len(vectors), 0))
            return SearchResult(empty.astype(np.float32), empty.astype(np.int64), index.ids, [note])
        k, notes = _clamp(index.size, k, extra=extra, available=int(allowed.sum()) - extra, filtered=True)
        # Few matching rows: comparing with each of them is cheap and exact, where an approximate search
        # would have to wade through mostly excluded rows (HNSW may stop before it finds k of them).
        fallback = int(allowed.sum()) <= exact_filter_rows and index.kind != "ivfpq"
        if index.kind == "ivfpq" and int(allowed.sum()) <= exact_filter_rows and nprobe is None:
            nprobe = _ivf_of(index.faiss_index).nlist  # no stored vectors: visit every list instead
    else:
        k, notes = _clamp(index.size, k, extra=extra)
    # A flat index compares every row anyway: restricted to some rows, FAISS's selector path checks them one by
    # one (no BLAS), 3x slower on 200 queries than reading the allowed rows back and comparing in one batch.
    fallback = fallback or (allowed is not None and index.kind == "flat")
    floats = index.float_vectors if rescore else None
    queries = _prepare(vectors, index.metric)
    fetch = k  # candidates asked of the index: more when they are re-scored
    if exact or fallback:
        if exact and (nprobe is not None or ef_search is not None):
            raise ConfigError("exact search visits every vector: nprobe / ef-search do not apply")
        if floats is not None:  # the float vectors are the exact ones: nothing left to re-score
            scores, positions = floats.exact(queries, k + extra, index.metric, allowed)
            floats = None
        else:
            scores, positions = _exact_search(index.faiss_index, queries, k + extra, index.metric, allowed)
    else:
        if floats is not None:
            fetch = floats.candidates(k, (index.size if allowed is None else int(allowed.sum())) - extra)
        _set_knobs(index.faiss_index, nprobe, ef_search)
        params = None if allowed is None else Selection(allowed).params(index.faiss_index)
        try:
            scores, positions = index.faiss_index.search(queries, fetch + extra, params=params)
        finally:
            if nprobe is not None or ef_search is not None:
                apply_params(index.faiss_index, index.meta.get("params") or {})
    if exclude is not None:
        scores, positions = _exclude(scores, positions, exclude, fetch)
    if floats is not None:
        scores, positions = floats.rerank(queries, positions, k, index.metric)
    if index.metric == "l2":
        scores = np.sqrt(np.maximum(scores, 0))
    return SearchResult(scores, positions, index.ids, notes)


def _clamp(
    size: int, k: int, extra: int = 0, available: int | None = None, filtered: bool = False
) -> tuple[int, list[str]]:
    """``k`` or the most rows a search can return (with a note saying so); ConfigError below 1."""
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    available = size - extra if available is None else available
    if available < 1 and not filtered:
        raise InputError(f"the index holds {size} row(s): nothing to return")
    available = max(available, 1)
    if k > available:
        what = "rows matching --where" if filtered else "rows the index can return"
        note = f"k={k} is more than the {available} {what}; returning {available}"
        log.info(note)  # returned as a note for the caller to show; a warning too would say it twice
        return available, [note]
    return k, []


def _set_knobs(faiss_index, nprobe: int | None, ef_search: int | None) -> None:
    """Set nprobe / efSearch for one search (the caller puts the tuned values back)."""
    knobs = {}
    if nprobe is not None:
        if nprobe < 1:
            raise ConfigError(f"nprobe must be at least 1, got {nprobe}")
        knobs["nprobe"] = nprobe
    if ef_search is not None:
        if ef_search < 1:
            raise ConfigError(f"efSearch must be at least 1, got {ef_search}")
        knobs["efSearch"] = ef_search
    if knobs:
        apply_params(faiss_index, knobs)
