"""Compaction (dropping deleted rows for good) and the recall figure re-measured after an index changes.

Deleted rows cost memory and, in an approximate index, search effort: HNSW still walks through them and IVF
still scans them, skipping them only when they would be returned. Once they pass ``COMPACT_FRACTION`` of the
FAISS rows (or on ``embedkit index compact``) they are removed: a flat index and the inverted lists of an IVF
index remove them in place (IVF lists are then renumbered so FAISS row = id-map row still holds); an HNSW graph
cannot lose nodes, so it is rebuilt from its own stored vectors (SQ8 codes: decoded, and encoded again by the same
trained quantizer, which gives back the same codes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from .faiss_ops import _faiss, _hnsw_of, _ivf_of, _metric_type, apply_params
from .live import live_mask
from .recall import EVAL_K, wilson_interval

if TYPE_CHECKING:
    from .search import Index

COMPACT_FRACTION = 0.2  # deleted rows above this share of the FAISS rows trigger a compaction
REMEASURE_QUERIES = 200  # live rows drawn as leave-one-out queries for the recall figure after a change
# The truth is an exact search over every live row: past this many row x dimension cells (~260k rows at 768-d)
# it would cost each small add or delete several seconds, so the build's figure stands alone.
REMEASURE_MAX_CELLS = 200_000_000


def maybe_compact(index: Index, threshold: float = COMPACT_FRACTION) -> int:
    """Compact when the deleted rows pass ``threshold`` of all FAISS rows; returns the rows dropped."""
    total = int(index.faiss_index.ntotal)
    if not len(index.deleted) or len(index.deleted) <= threshold * total:
        return 0
    return compact(index)


def compact(index: Index) -> int:
    """Remove the deleted rows from the FAISS index and the id map (in memory); returns how many."""
    faiss = _faiss()
    dropped = len(index.deleted)
    if not dropped:
        return 0
    keep = live_mask(int(index.faiss_index.ntotal), index.deleted)
    if _hnsw_of(index.faiss_index) is not None:
        vectors = index.faiss_index.reconstruct_batch(np.flatnonzero(keep).astype(np.int64))
        rebuilt = faiss.index_factory(index.dim, index.meta["factory"], _metric_type(index.metric))
        if not rebuilt.is_trained:  # HNSW over SQ8 codes: reuse the trained quantizer, so each row keeps its code
            storage = faiss.downcast_index(rebuilt.storage)
            storage.sq = faiss.downcast_index(index.faiss_index.storage).sq
            storage.is_trained = rebuilt.is_trained = True
        rebuilt.add(vectors)  # already prepared (normalised for cosine) when first added; SQ8: decoded codes
        index.faiss_index = rebuilt
    else:
        ivf = _ivf_of(index.faiss_index)
        if ivf is not None:
            ivf.make_direct_map(False)  # remove_ids refuses an IVF with an array direct map
        index.faiss_index.remove_ids(faiss.IDSelectorBatch(index.deleted))
        if ivf is not None:
            _renumber_lists(ivf, index.deleted)
    if index.meta.get("params"):
        apply_params(index.faiss_index, index.meta["params"])
    if index.float_vectors is not None:
        index.float_vectors.keep(keep)
    index.ids = index.ids.filter(pa.array(keep))
    index.deleted = np.empty(0, np.int64)
    index._positions = None
    return dropped


def _renumber_lists(ivf, deleted: np.ndarray) -> None:
    """After ``remove_ids`` an IVF keeps the old row numbers: shift each down by the deleted rows before it."""
    faiss = _faiss()
    for list_no in range(ivf.nlist):
        size = ivf.invlists.list_size(list_no)
        if size:
            ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(list_no), size)  # a view of the list's own ids
            ids -= np.searchsorted(deleted, ids)


def remeasure(index: Index, queries: int = REMEASURE_QUERIES, seed: int = 0) -> dict[str, Any] | None:
    """recall@10 of the changed index: leave-one-out on live rows, exact search among live rows as the truth.

    The build measured recall on held-out new queries; after rows were deleted or replaced that figure describes
    another index. Leave-one-out is a little optimistic (a row's own neighbourhood is in the graph or list), so
    it is kept apart as ``recall_now`` with its basis. None for ivfpq (no stored vectors: no exact truth).
    """
    if index.kind == "ivfpq" or index.size < 2 or index.size * index.dim > REMEASURE_MAX_CELLS:
        return None  # no exact truth (ivfpq), nothing to measure, or a truth too costly to compute on every change
    codes = index.meta.get("codes")  # flat SQ8 codes are not exact: measured like an approximate index
    if index.kind == "flat" and (not isinstance(codes, dict) or codes.get("type") == "float32"):
        return {"recall_at_10": 1.0, "recall_interval": [1.0, 1.0], "queries": 0, "basis": "exact search"}
    k = min(EVAL_K, index.size - 1)
    live = index.live()
    rows = np.flatnonzero(live) if live is not None else np.arange(index.size)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(rows, size=min(queries, len(rows)), replace=False)).astype(np.int64)
    if index.float_vectors is not None:  # the queries a re-scoring index serves: float vectors
        vectors = index.float_vectors.take(picked)
    else:
        vectors = np.vstack([index._reconstruct(int(p)) for p in picked])
    approx = index.search_vectors(vectors, k, exclude=picked).positions
    truth = index.search_vectors(vectors, k, exclude=picked, exact=True).positions
    hits = np.array([np.intersect1d(a[a >= 0], t[t >= 0]).size for a, t in zip(approx, truth)])
    recall, low, high = wilson_interval(hits, k)
    return {
        "recall_at_10": round(recall, 4),
        "recall_interval": [round(low, 4), round(high, 4)],
        "queries": len(picked),
        "basis": "leave-one-out on live rows, after the last change",
    }


def change_lines(compacted: int, recall: dict[str, Any] | None, automatic: bool = True) -> list[str]:
    out = []
    if compacted:
        why = f" (deleted rows passed {COMPACT_FRACTION:.0%} of the index)" if automatic else ""
        out.append(f"compacted: {compacted:,} deleted rows dropped for good{why}")
    if recall is not None and recall["queries"]:
        low, high = recall["recall_interval"]
        out.append(
            f"recall@10 now {recall['recall_at_10']:.3f} (95% CI {low:.3f}-{high:.3f}; leave-one-out on "
            f"{recall['queries']} live rows)"
        )
    return out
