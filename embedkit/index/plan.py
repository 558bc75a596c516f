"""Choosing an index: ``--kind auto`` rules, FAISS factory strings and size estimates for a memory budget."""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, choice_error

log = logging.getLogger(__name__)


KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq")

METRICS = ("cosine", "ip", "l2")

# How FAISS holds the vectors of a flat, hnsw or ivf index: float32 (4 bytes a dimension) or its 8-bit scalar
# quantizer (1 byte a dimension, each dimension's range learnt by train). SQ8 is the default for int8 features:
# they carry no more than 8 bits a dimension anyway (MiniLM fortunes: recall@10 0.988, 1.000 re-scored,
# benchmarks/RESULTS.md). ivfpq keeps its own product-quantizer codes either way.
CODES = ("float32", "sq8")

SQ_TRAIN_ROWS = 65_536  # rows the scalar quantizer learns each dimension's min and max from

DEFAULT_MEMORY = "4GB"


# --kind auto, anchored on autofaiss's rules (get_optimal_index_keys_v2): exact search under 1k rows, HNSW
# while it fits in the budget, IVF-flat with ~4*sqrt(N) lists, IVF-PQ when memory demands it.
FLAT_MAX_ROWS = 1_000

HNSW_M = 32


# HNSW inserts one vector at a time with a graph search each; on a laptop-class CPU a 768-d HNSW32 build
# passes 10 minutes around 1M rows while IVF-flat builds in about two, so auto stops choosing HNSW above
# this many row*dimension cells (~260k rows at 768-d, ~1.5M at 128-d). Explicit --kind hnsw has no cap.
HNSW_MAX_CELLS = 200_000_000

IVF_MIN_ROWS_PER_LIST = 39  # faiss's own k-means minimum; below it, fewer lists

IVF_TRAIN_ROWS_PER_LIST = 32  # training sample per list; k-means cost grows with it

IVF_KMEANS_ITERATIONS = 15

IVF_HNSW_QUANTIZER_LISTS = 1024  # from here on the coarse quantizer is an HNSW over centroids (as autofaiss)

PQ_BYTES = (64, 48, 32, 24, 16, 8, 4)  # bytes per vector, largest (most accurate) first

PQ_TRAIN_ROWS = 16_384

PQ_CODES = 256  # 8-bit codes: centroids per sub-quantizer

PQ_KMEANS_ITERATIONS = 10

OPQ_MIN_ROWS = 20_000

OPQ_ITERATIONS = 10  # faiss default 50: each iteration trains a whole PQ; the rotation settles early

OPQ_MAX_RATIO = 6  # OPQ output dim <= 6 bytes-per-vector x m (as autofaiss): keeps OPQ training affordable

ID_BYTES = 8  # FAISS stores an int64 id per vector in inverted lists

_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_memory(value: str | int) -> int:
    """Bytes from ``4GB``, ``512MiB``, ``1.5G`` or a plain byte count (units are binary: 1 GB = 2**30)."""
    if isinstance(value, (int, np.integer)):
        if value <= 0:
            raise ConfigError(f"memory budget must be positive, got {value}")
        return int(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(value), flags=re.IGNORECASE)
    if not match:
        raise ConfigError(f"cannot read memory budget {value!r}: use e.g. 4GB, 512MB, 1.5G or a byte count")
    amount = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if amount <= 0:
        raise ConfigError(f"memory budget must be positive, got {value!r}")
    return int(amount)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


@dataclass(frozen=True)
class IndexPlan:
    """What will be built: the kind, its FAISS factory string, the estimated size and why it was chosen."""

    kind: str
    factory: str
    nlist: int = 0
    pq_bytes: int = 0
    estimated_bytes: int = 0
    reason: str = ""
    codes: str = "float32"  # how the vectors are held (CODES); "pq" for ivfpq


def ivf_lists(rows: int) -> int:
    """~4*sqrt(N) lists rounded to a power of two, but never fewer than 39 training rows per list."""
    target = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(rows))))
    return int(max(1, min(target, rows // IVF_MIN_ROWS_PER_LIST)))


def _codes_for(kind: str, codes: str) -> str:
    return "pq" if kind == "ivfpq" else codes


def _suffix(codes: str) -> str:
    """The storage part of a FAISS factory string."""
    return "SQ8" if codes == "sq8" else "Flat"


def _ivf_prefix(nlist: int) -> str:
    return f"IVF{nlist}_HNSW32" if nlist >= IVF_HNSW_QUANTIZER_LISTS else f"IVF{nlist}"


def _estimate(kind: str, rows: int, dim: int, nlist: int = 0, pq_bytes: int = 0, codes: str = "float32") -> int:
    """Resident size of an index in bytes (vectors, graph links or codes, ids, centroids)."""
    vector = dim if codes == "sq8" else dim * 4
    if kind == "flat":
        return rows * vector
    if kind == "hnsw":
        # Level 0 keeps 2M links per vector, upper levels add ~1/M of that; plus level bookkeeping.
        return rows * (vector + HNSW_M * 2 * 4 + HNSW_M * 4 // 2 + 12)
    centroids = nlist * dim * 4 + (nlist * HNSW_M * 2 * 4 if nlist >= IVF_HNSW_QUANTIZER_LISTS else 0)
    if kind == "ivf":
        return rows * (vector + ID_BYTES) + centroids
    opq = dim * dim * 4
    return rows * (pq_bytes + ID_BYTES) + centroids + opq + 256 * dim * 4


def _pq_factory(rows: int, dim: int, nlist: int, m: int) -> str:
    sub_dims = dim // m
    # OPQ rotates (and may reduce) the input so each of the m sub-vectors carries similar variance; it pays off
    # when a sub-quantizer covers several dimensions and there are enough rows to learn the rotation (each of
    # its iterations trains a 256-centroid PQ, which wants ~10k rows).
    opq = f"OPQ{m}_{m * min(sub_dims, OPQ_MAX_RATIO)}," if sub_dims >= 2 and rows >= OPQ_MIN_ROWS else ""
    return f"{opq}{_ivf_prefix(nlist)},PQ{m}np"  # np: no polysemous training (slow, unused here)


def _pq_bytes(rows: int, dim: int, nlist: int, budget: int | None) -> int:
    """Bytes per vector: the largest code that fits ``budget`` (at least 2 dimensions per byte)."""
    candidates = [m for m in PQ_BYTES if m <= dim // 2] or [1]
    if budget is not None:
        within = [m for m in candidates if _estimate("ivfpq", rows, dim, nlist, m) <= budget]
        return within[0] if within else candidates[-1]
    return candidates[0]


def plan_index(kind: str, rows: int, dim: int, memory: str | int = DEFAULT_MEMORY, codes: str = "float32") -> IndexPlan:
    """Turn ``kind`` (possibly ``auto``) into a concrete plan for ``rows`` vectors of ``dim`` dimensions.

    ``codes`` (CODES) is how a flat, hnsw or ivf index holds its vectors; ivfpq always holds PQ codes.

    Raises:
        ConfigError: unknown kind or codes, or no kind fits the memory budget.
    """
    if kind not in KINDS:
        raise choice_error("index kind", kind, KINDS)
    if codes not in CODES:
        raise choice_error("vector codes", codes, CODES)
    budget = parse_memory(memory)
    nlist = ivf_lists(rows)
    if kind == "auto":
        plan = _auto_plan(rows, dim, budget, nlist, codes)
    elif kind == "flat":
        factory = "Flat" if codes == "float32" else _suffix(codes)
        plan = IndexPlan("flat", factory, estimated_bytes=_estimate("flat", rows, dim, codes=codes), reason="asked for")
    elif kind == "hnsw":
        factory = f"HNSW{HNSW_M}" + ("" if codes == "float32" else f",{_suffix(codes)}")
        plan = IndexPlan("hnsw", factory, estimated_bytes=_estimate("hnsw", rows, dim, codes=codes), reason="asked for")
    elif kind == "ivf":
        plan = IndexPlan(
            "ivf",
            f"{_ivf_prefix(nlist)},{_suffix(codes)}",
            nlist,
            estimated_bytes=_estimate("ivf", rows, dim, nlist, codes=codes),
            reason="asked for",
        )
    else:
        m = _pq_bytes(rows, dim, nlist, budget)
        plan = IndexPlan(
            "ivfpq", _pq_factory(rows, dim, nlist, m), nlist, m, _estimate("ivfpq", rows, dim, nlist, m), "asked for"
        )
    plan = dataclasses.replace(plan, codes=_codes_for(plan.kind, codes))
    if kind != "auto" and plan.estimated_bytes > budget:
        log.warning(
            "a %s index of %d x %d needs about %s, over the %s budget",
            plan.kind,
            rows,
            dim,
            human_bytes(plan.estimated_bytes),
            human_bytes(budget),
        )
    return plan


def _auto_plan(rows: int, dim: int, budget: int, nlist: int, codes: str = "float32") -> IndexPlan:
    flat = _estimate("flat", rows, dim, codes=codes)
    if rows < FLAT_MAX_ROWS and flat <= budget:
        return IndexPlan(
            "flat",
            "Flat" if codes == "float32" else _suffix(codes),
            estimated_bytes=flat,
            reason=f"under {FLAT_MAX_ROWS:,} rows exact search is fastest",
        )
    hnsw = _estimate("hnsw", rows, dim, codes=codes)
    if hnsw <= budget and rows * dim <= HNSW_MAX_CELLS:
        return IndexPlan(
            "hnsw",
            f"HNSW{HNSW_M}" + ("" if codes == "float32" else f",{_suffix(codes)}"),
            estimated_bytes=hnsw,
            reason="fits the memory budget with graph links",
        )
    ivf = _estimate("ivf", rows, dim, nlist, codes=codes)
    if ivf <= budget:
        why = "too large to build HNSW quickly" if hnsw <= budget else "HNSW does not fit the memory budget"
        return IndexPlan(
            "ivf",
            f"{_ivf_prefix(nlist)},{_suffix(codes)}",
            nlist,
            estimated_bytes=ivf,
            reason=f"{why}; {'full' if codes == 'float32' else codes} vectors fit",
        )
    m = _pq_bytes(rows, dim, nlist, budget)
    pq = _estimate("ivfpq", rows, dim, nlist, m)
    if pq > budget:
        raise ConfigError(
            f"no index of {rows:,} x {dim} fits in {human_bytes(budget)}: the smallest (IVF-PQ, {m} bytes per vector) "
            f"needs about {human_bytes(pq)}; raise --memory"
        )
    return IndexPlan(
        "ivfpq",
        _pq_factory(rows, dim, nlist, m),
        nlist,
        m,
        pq,
        reason=f"full vectors ({human_bytes(ivf)}) exceed the {human_bytes(budget)} budget: {m}-byte codes",
    )


def _train_rows(plan: IndexPlan, rows: int) -> int:
    sq = SQ_TRAIN_ROWS if plan.codes == "sq8" else 0
    if plan.kind == "ivf":
        return min(rows, max(plan.nlist * IVF_TRAIN_ROWS_PER_LIST, sq))
    if plan.kind == "ivfpq":
        return min(rows, max(plan.nlist * IVF_TRAIN_ROWS_PER_LIST, PQ_TRAIN_ROWS))
    return min(rows, sq)
