"""FAISS similarity index: choose, train, add, verify, save/load and search by text, vector or id.

An index directory is an embedkit artefact (:mod:`embedkit.artefact`) holding:

* ``index.faiss``: the FAISS index (built from an ``index_factory`` string),
* ``ids.parquet``: row ``i`` of the FAISS index is row ``i`` of this table (the features ``id`` plus any
  stored columns such as ``text``, for display),
* ``index.json``, the manifest, written last: extraction settings of the indexed column (so ``search`` embeds
  query text exactly the same way), metric, index kind, factory string, counts, tuned search parameters, build
  figures and the sha256 and size of every file, all checked before FAISS reads anything.

Every write (``build``, ``build --overwrite``, ``add``) holds the directory's lock, writes a complete new
directory aside and switches it in by rename, so a kill at any instant leaves the previous index or the new one,
and two writers never both succeed. ``add`` re-reads the index under the lock, so concurrent adds serialise and
no batch is lost. Indexes of format 1 (``index-N.faiss`` / ``ids-N.parquet`` named in ``index.json``) are still
read; the first ``add`` rewrites them in the current format.

Build streams the features file twice in bounded batches: the first pass draws a training sample and a
held-out query sample, the second adds vectors to the index while keeping the exact top-k of the query sample
(a running heap), so recall is measured without ever holding the whole matrix. Recall is leave-one-out: a
query's own row is removed from both the exact and the approximate neighbours. Rows whose vector holds NaN, an
infinity or values whose square overflows float32 are skipped and counted, like rows without an embedding:
FAISS would index them, but no search could ever rank them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import artefact
from .config import ExtractConfig
from .errors import ConfigError, IncompatibleError, InputError, OutputError, choice_error
from .store import Features, open_features

log = logging.getLogger(__name__)

KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq")
METRICS = ("cosine", "ip", "l2")
META_FILE = "index.json"  # the artefact manifest
INDEX_FORMAT = 2  # 1: data files named index-N.faiss / ids-N.parquet by index.json, still read
ARTEFACT_KIND = "embedkit-index"
INDEX_FILE, IDS_FILE = "index.faiss", "ids.parquet"
PARAM_NAMES = ("nprobe", "efSearch")
MAX_STORED_EF_SEARCH = 1 << 16  # tuning stops at 2048; a larger stored value is hostile (it sizes search buffers)
MAX_DIM = 1 << 20
LOAD_ATTEMPTS = 20  # a reader that saw the directory switched under it (a concurrent add) reads it again
DEFAULT_MEMORY = "4GB"
DEFAULT_TARGET_RECALL = 0.95
DEFAULT_K = 10
EVAL_K = 10  # recall@10, the figure the build reports
EVAL_QUERIES = 1000  # held-out queries for recall and queries/s
# The held-out queries are kept out of the index while it is tuned (added after), so at most this fraction of
# the rows: a much smaller index than the final one would be easier to search, and the estimate optimistic.
EVAL_MAX_FRACTION = 0.1
# The tuner picks the cheapest setting whose recall@10 interval (this confidence) lies above the target, so the
# target holds for new queries and not only on average over the sample it was measured on.
RECALL_CONFIDENCE_Z = 1.96  # 95%, two-sided
BATCH_ROWS = 65536

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
EF_SEARCH_STEPS = (16, 32, 64, 128, 256, 512, 1024, 2048)
ID_BYTES = 8  # FAISS stores an int64 id per vector in inverted lists

_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


# ---------------------------------------------------------------------------------------------- planning


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


def ivf_lists(rows: int) -> int:
    """~4*sqrt(N) lists rounded to a power of two, but never fewer than 39 training rows per list."""
    target = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(rows))))
    return int(max(1, min(target, rows // IVF_MIN_ROWS_PER_LIST)))


def _ivf_prefix(nlist: int) -> str:
    return f"IVF{nlist}_HNSW32" if nlist >= IVF_HNSW_QUANTIZER_LISTS else f"IVF{nlist}"


def _estimate(kind: str, rows: int, dim: int, nlist: int = 0, pq_bytes: int = 0) -> int:
    """Resident size of an index in bytes (vectors, graph links or codes, ids, centroids)."""
    if kind == "flat":
        return rows * dim * 4
    if kind == "hnsw":
        # Level 0 keeps 2M links per vector, upper levels add ~1/M of that; plus level bookkeeping.
        return rows * (dim * 4 + HNSW_M * 2 * 4 + HNSW_M * 4 // 2 + 12)
    centroids = nlist * dim * 4 + (nlist * HNSW_M * 2 * 4 if nlist >= IVF_HNSW_QUANTIZER_LISTS else 0)
    if kind == "ivf":
        return rows * (dim * 4 + ID_BYTES) + centroids
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


def plan_index(kind: str, rows: int, dim: int, memory: str | int = DEFAULT_MEMORY) -> IndexPlan:
    """Turn ``kind`` (possibly ``auto``) into a concrete plan for ``rows`` vectors of ``dim`` dimensions.

    Raises:
        ConfigError: unknown kind, or no kind fits the memory budget.
    """
    if kind not in KINDS:
        raise choice_error("index kind", kind, KINDS)
    budget = parse_memory(memory)
    nlist = ivf_lists(rows)
    if kind == "auto":
        return _auto_plan(rows, dim, budget, nlist)
    if kind == "flat":
        plan = IndexPlan("flat", "Flat", estimated_bytes=_estimate("flat", rows, dim), reason="asked for")
    elif kind == "hnsw":
        plan = IndexPlan("hnsw", f"HNSW{HNSW_M}", estimated_bytes=_estimate("hnsw", rows, dim), reason="asked for")
    elif kind == "ivf":
        plan = IndexPlan(
            "ivf",
            f"{_ivf_prefix(nlist)},Flat",
            nlist,
            estimated_bytes=_estimate("ivf", rows, dim, nlist),
            reason="asked for",
        )
    else:
        m = _pq_bytes(rows, dim, nlist, budget)
        plan = IndexPlan(
            "ivfpq", _pq_factory(rows, dim, nlist, m), nlist, m, _estimate("ivfpq", rows, dim, nlist, m), "asked for"
        )
    if plan.estimated_bytes > budget:
        log.warning(
            "a %s index of %d x %d needs about %s, over the %s budget",
            plan.kind,
            rows,
            dim,
            human_bytes(plan.estimated_bytes),
            human_bytes(budget),
        )
    return plan


def _auto_plan(rows: int, dim: int, budget: int, nlist: int) -> IndexPlan:
    flat = _estimate("flat", rows, dim)
    if rows < FLAT_MAX_ROWS and flat <= budget:
        return IndexPlan(
            "flat", "Flat", estimated_bytes=flat, reason=f"under {FLAT_MAX_ROWS:,} rows exact search is fastest"
        )
    hnsw = _estimate("hnsw", rows, dim)
    if hnsw <= budget and rows * dim <= HNSW_MAX_CELLS:
        return IndexPlan(
            "hnsw", f"HNSW{HNSW_M}", estimated_bytes=hnsw, reason="fits the memory budget with graph links"
        )
    ivf = _estimate("ivf", rows, dim, nlist)
    if ivf <= budget:
        why = "too large to build HNSW quickly" if hnsw <= budget else "HNSW does not fit the memory budget"
        return IndexPlan(
            "ivf", f"{_ivf_prefix(nlist)},Flat", nlist, estimated_bytes=ivf, reason=f"{why}; full vectors fit"
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


# ---------------------------------------------------------------------------------------------- faiss helpers


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


def _peak_rss_bytes() -> int:
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux
    except (ImportError, OSError):
        return 0


# ---------------------------------------------------------------------------------------------- recall


def wilson_interval(hits: np.ndarray, k: int, z: float = RECALL_CONFIDENCE_Z) -> tuple[float, float, float]:
    """Mean recall of per-query hit counts (out of ``k`` each) and its Wilson score interval.

    The k answers of one query are not independent trials (a query in a sparse region misses several), so the
    interval uses the effective number of trials that the spread between queries implies:
    ``n_eff = p(1 - p) / var(mean of per-query recall)``, capped at the number of answers and at least the
    number of queries. With the k answers independent that is the binomial Wilson interval on the counts.
    """
    per_query = np.asarray(hits, dtype=np.float64) / k
    q = len(per_query)
    if q == 0:
        return 1.0, 0.0, 1.0
    p = float(per_query.mean())
    var_mean = float(per_query.var(ddof=1)) / q if q > 1 else 0.0
    n = float(q * k) if var_mean <= 0 else min(q * k, max(q, p * (1 - p) / var_mean))
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)


def _drop_self(ids: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Remove each query's own row from its neighbour list (leave-one-out) and keep the first ``k``."""
    out = np.full((ids.shape[0], k), -1, dtype=np.int64)
    for q in range(ids.shape[0]):
        row = ids[q][(ids[q] != own[q]) & (ids[q] >= 0)][:k]
        out[q, : row.size] = row
    return out


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true neighbours found (rows of -1 padding ignored in the truth)."""
    hits, total = 0, 0
    for f, t in zip(found, truth):
        t = t[t >= 0]
        hits += np.intersect1d(f[f >= 0], t).size
        total += t.size
    return hits / total if total else 1.0


@dataclass
class Evaluation:
    """Held-out queries and their exact neighbours among the indexed rows.

    ``positions`` None: the queries are not in the index (the build's case: new queries, as search meets them).
    Otherwise they are rows of the index at those positions, left out of their own answers (leave-one-out).
    """

    queries: np.ndarray
    positions: np.ndarray | None
    truth: np.ndarray
    k: int

    def hits(self, index) -> np.ndarray:
        """True neighbours found, per query."""
        if self.positions is None:
            _, found = index.search(self.queries, self.k)
        else:
            _, found = index.search(self.queries, self.k + 1)
            found = _drop_self(found, self.positions, self.k)
        return np.array([np.intersect1d(f[f >= 0], t[t >= 0]).size for f, t in zip(found, self.truth)])

    def recall(self, index) -> float:
        return wilson_interval(self.hits(index), self.k)[0]

    def interval(self, index) -> tuple[float, float, float]:
        """recall@k and its confidence interval (``wilson_interval``)."""
        return wilson_interval(self.hits(index), self.k)

    def queries_per_second(self, index, min_seconds: float = 0.5) -> float:
        runs, start = 0, time.perf_counter()
        while True:
            index.search(self.queries, self.k)
            runs += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds or runs >= 20:
                return runs * len(self.queries) / elapsed


def tune(index, evaluation: Evaluation, target: float) -> tuple[dict[str, int], tuple[float, float, float]]:
    """The cheapest nprobe / efSearch whose recall interval lies above ``target`` (else the best one tried).

    Returns the setting and its ``(recall, low, high)``: the lower end of the interval must reach the target,
    so the margin over it shrinks as more held-out queries make the estimate tighter.
    """
    ivf = _ivf_of(index)
    if ivf is not None:
        steps = sorted({min(2**i, ivf.nlist) for i in range(int(math.log2(max(1, ivf.nlist))) + 1)} | {ivf.nlist})
        name = "nprobe"
    elif _hnsw_of(index) is not None:
        steps = [s for s in EF_SEARCH_STEPS if s >= evaluation.k] or [EF_SEARCH_STEPS[-1]]
        name = "efSearch"
    else:
        return {}, evaluation.interval(index)
    best: tuple[tuple[float, float, float], int] = ((-1.0, -1.0, -1.0), steps[-1])
    for value in steps:
        apply_params(index, {name: value})
        estimate = evaluation.interval(index)
        log.info("%s=%d: recall@%d %.4f [%.4f, %.4f]", name, value, evaluation.k, *estimate)
        if estimate[1] > best[0][1] + 1e-9:
            best = (estimate, value)
        if estimate[1] >= target:
            return {name: value}, estimate
    log.warning(
        "recall@%d target %.2f not reached; best %.4f at %s=%d", evaluation.k, target, best[0][0], name, best[1]
    )
    apply_params(index, {name: best[1]})
    return {name: best[1]}, best[0]


# ---------------------------------------------------------------------------------------------- build


@dataclass
class BuildReport:
    """What a build (or add) produced, with the figures it measured."""

    directory: Path
    kind: str
    factory: str
    metric: str
    rows: int
    dim: int
    skipped_null_rows: int
    build_seconds: float
    index_bytes: int
    peak_rss_bytes: int
    recall_at_10: float | None
    queries_per_second: float | None
    params: dict[str, int]
    target_recall: float
    eval_queries: int
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    skipped_nonfinite_rows: int = 0
    skipped_nonfinite_ids: list[Any] = field(default_factory=list)  # the first few, to find them
    recall_interval: tuple[float, float] | None = None  # 95% interval of recall_at_10 (``wilson_interval``)
    eval_duplicates: int = 0  # held-out queries left out of the evaluation: exact copies of indexed rows

    def summary_lines(self) -> list[str]:
        params = ", ".join(f"{k}={v}" for k, v in self.params.items()) or "exact"
        out = [
            f"{self.rows:,} vectors (dim {self.dim}, {self.metric}) -> {self.directory}",
            f"kind {self.kind} ({self.factory}){': ' + self.reason if self.reason else ''}",
            f"build {self.build_seconds:.1f}s, index {human_bytes(self.index_bytes)}, "
            f"peak memory {human_bytes(self.peak_rss_bytes)}",
        ]
        if self.recall_at_10 is not None:
            low = self.recall_interval[0] if self.recall_interval else self.recall_at_10
            reached = "" if low >= self.target_recall - 1e-9 else f" (target {self.target_recall} not reached)"
            interval = ""
            if self.recall_interval:
                interval = f" (95% CI {self.recall_interval[0]:.3f}-{self.recall_interval[1]:.3f})"
            dropped = f", {self.eval_duplicates} copies of indexed rows left out" if self.eval_duplicates else ""
            out.append(
                f"recall@10 {self.recall_at_10:.3f}{interval}{reached} at {params} on {self.eval_queries} held-out "
                f"queries (new to the index when tuned{dropped}), {self.queries_per_second:,.0f} queries/s"
            )
        out += _skipped_lines(self.skipped_null_rows, self.skipped_nonfinite_rows, self.skipped_nonfinite_ids)
        return out + [f"note: {note}" for note in self.notes]

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items()}
        d["directory"] = str(self.directory)
        return d


def _default_store(features: Features, column: str) -> list[str]:
    return ["text"] if "text" in features.schema.names and column != "text" else []


def _store_note(features: Features, store: list[str]) -> list[str]:
    """Say so when search will show bare ids although the file has text columns (e.g. ``--keep body``)."""
    if store or not features.text_columns:
        return []
    return [
        f"search results will show ids only: no 'text' column to store for display; pass --store COLUMN "
        f"(text columns here: {', '.join(features.text_columns)})"
    ]


def _column_dim(features: Features, column: str) -> int:
    return int(features.schema.field(column).type.list_size)


def _skipped_lines(null_rows: int, nonfinite_rows: int, nonfinite_ids: list[Any]) -> list[str]:
    out = []
    if null_rows:
        out.append(f"{null_rows} rows without an embedding skipped")
    if nonfinite_rows:
        ids = ", ".join(map(str, nonfinite_ids)) + (", ..." if nonfinite_rows > len(nonfinite_ids) else "")
        out.append(
            f"{nonfinite_rows} rows whose embedding holds NaN, infinite or overflowing values skipped (no "
            f"search could return them; ids {ids}): re-embed those rows"
        )
    return out


@dataclass
class _Skipped:
    """Rows of a features file left out of the index because their vector is not usable (see _usable_rows)."""

    rows: int = 0
    examples: list[Any] = field(default_factory=list)


def _usable_batches(features: Features, column: str, extra, batch_rows: int, skipped: _Skipped | None = None):
    """``Features.iter_batches`` without the rows whose vector is not finite (counted into ``skipped``).

    Every pass over a file goes through here, so row positions agree between the sampling pass and the add pass.
    """
    for matrix, table in features.iter_batches(column, extra, batch_rows):
        finite = _usable_rows(matrix)
        if not finite.all():
            if skipped is not None:
                skipped.rows += int((~finite).sum())
                left = 5 - len(skipped.examples)
                if left > 0:
                    skipped.examples += table.column("id").filter(pa.array(~finite)).slice(0, left).to_pylist()
            matrix, table = matrix[finite], table.filter(pa.array(finite))
        if len(matrix):
            yield matrix, table


def _usable_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows FAISS can rank: no NaN or infinity, and a squared norm that fits float32.

    embed's writer turns an infinity into float32's largest value, whose square overflows FAISS's float32
    distances (and the cosine normalisation) just as an infinity would; one check catches all three.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        return np.isfinite(np.einsum("ij,ij->i", matrix, matrix, dtype=np.float32))


class _Copies:
    """Which query vectors have an exact copy among the rows streamed past ``check``.

    A random projection finds candidates cheaply (identical vectors project identically); the bytes of each
    candidate are then compared, so only exact copies count.
    """

    def __init__(self, queries: np.ndarray) -> None:
        self.queries = queries
        self.found = np.zeros(len(queries), dtype=bool)
        rng = np.random.default_rng(0)
        self._direction = rng.standard_normal(queries.shape[1], dtype=np.float32)
        self._keys: dict[bytes, list[int]] = {}
        for n, q in enumerate(queries):
            self._keys.setdefault(q.tobytes(), []).append(n)
        projected = queries @ self._direction
        self._order = np.argsort(projected)
        self._sorted = projected[self._order]

    def check(self, rows: np.ndarray) -> None:
        if not len(self.queries) or not len(rows):
            return
        projected = rows @ self._direction
        at = np.clip(np.searchsorted(self._sorted, projected), 0, len(self._sorted) - 1)
        near = np.abs(self._sorted[at] - projected) <= 1e-4 * (1 + np.abs(projected))
        near |= np.abs(self._sorted[np.maximum(at - 1, 0)] - projected) <= 1e-4 * (1 + np.abs(projected))
        for row in rows[near]:
            self.found[self._keys.get(row.tobytes(), [])] = True


@dataclass
class _Samples:
    train: np.ndarray
    queries: np.ndarray
    query_positions: np.ndarray
    rows: int
    nonfinite: _Skipped


def _draw_samples(
    features: Features, column: str, train_rows: int, eval_queries: int, metric: str, seed: int, batch_rows: int
) -> _Samples:
    """First pass: count rows with an embedding, draw a training sample and disjoint held-out queries."""
    rng = np.random.default_rng(seed)
    total = features.num_rows
    n_queries = min(eval_queries, max(1, int(total * EVAL_MAX_FRACTION)), max(0, total - 1))
    picks = rng.permutation(total)
    query_set = np.sort(picks[:n_queries])
    if n_queries + train_rows <= total:  # held out: queries never seen in training
        train_set = np.sort(picks[n_queries : n_queries + train_rows])
    else:  # too few rows to keep them apart: train on a sample of all rows
        train_set = np.sort(rng.permutation(total)[:train_rows])
    train, queries, query_pos, seen, nonfinite = [], [], [], 0, _Skipped()
    for matrix, _ in _usable_batches(features, column, (), batch_rows, nonfinite):
        positions = np.arange(seen, seen + len(matrix))
        in_q = np.isin(positions, query_set)
        queries.append(matrix[in_q])
        query_pos.append(positions[in_q])
        if train_rows:
            in_t = np.isin(positions, train_set)
            train.append(matrix[in_t])
        seen += len(matrix)
    if seen == 0:
        why = f"{nonfinite.rows} hold NaN, infinite or overflowing values" if nonfinite.rows else "all are null"
        raise InputError(f"{features.path}: no row has a usable embedding in {column!r} ({total} rows: {why})")
    dim = _column_dim(features, column)
    stack = lambda parts: _prepare(np.concatenate(parts) if parts else np.empty((0, dim), np.float32), metric)  # noqa: E731
    return _Samples(stack(train), stack(queries), np.concatenate(query_pos).astype(np.int64), seen, nonfinite)


def _reserve_ivf_lists(index, features: Features, column: str, metric: str, batch_rows: int) -> None:
    """Size each inverted list of an IVF-flat index to its final length before the vectors are added.

    FAISS appends to its lists by growing each std::vector, which doubles its capacity: an IVF-flat index of
    0.9 GB of vectors measured 1.5 GB of RSS after its adds, and 1,000,000 x 768 (2.9 GB) peaked near 9 GB.
    Counting the list of every row first (one more read of the file and one coarse-quantizer search per row)
    lets each list allocate once. Resizing to the count and back to 0 keeps that capacity: std::vector does
    not shrink. A count that differs from the add's own assignment only costs a reallocation, never a result.
    """
    ivf = _ivf_of(index)
    counts = np.zeros(ivf.nlist, dtype=np.int64)
    for matrix, _ in _usable_batches(features, column, (), batch_rows):
        _, lists = ivf.quantizer.search(_prepare(matrix, metric), 1)
        counts += np.bincount(lists[:, 0][lists[:, 0] >= 0], minlength=ivf.nlist)
    for list_no in np.flatnonzero(counts):
        ivf.invlists.resize(int(list_no), int(counts[list_no]))
        ivf.invlists.resize(int(list_no), 0)


def _train_rows(plan: IndexPlan, rows: int) -> int:
    if plan.kind == "ivf":
        return min(rows, plan.nlist * IVF_TRAIN_ROWS_PER_LIST)
    if plan.kind == "ivfpq":
        return min(rows, max(plan.nlist * IVF_TRAIN_ROWS_PER_LIST, PQ_TRAIN_ROWS))
    return 0


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


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="rows", desc=desc, disable=not enabled, leave=False)


def build_index(
    features: str | Path,
    output: str | Path,
    *,
    kind: str = "auto",
    metric: str = "cosine",
    memory: str | int = DEFAULT_MEMORY,
    column: str | None = None,
    store: Sequence[str] | None = None,
    target_recall: float = DEFAULT_TARGET_RECALL,
    eval_queries: int = EVAL_QUERIES,
    batch_rows: int = BATCH_ROWS,
    overwrite: bool = False,
    progress: bool = False,
    seed: int = 0,
    wait: bool = False,
) -> BuildReport:
    """Build a FAISS index of one embedding column of a features file into the directory ``output``.

    The index is built aside under ``output``'s lock and switched in complete: with ``overwrite`` the previous
    index stays usable until then, and survives a failure or a kill.

    Args:
        features: Parquet written by ``embedkit embed``.
        output: index directory (created; must not hold an index unless ``overwrite``).
        kind: ``auto``, ``flat``, ``hnsw``, ``ivf`` or ``ivfpq``.
        metric: ``cosine`` (vectors normalised, inner product), ``ip`` or ``l2``.
        memory: budget for the index in RAM (``4GB``); ``auto`` picks the best kind that fits it.
        column: embedding column (needed when the file has several).
        store: columns kept beside the ids for display (default: ``text`` when present).
        target_recall: recall@10 that nprobe / efSearch are tuned to reach on held-out queries.
        eval_queries: how many rows are drawn as held-out queries.
        batch_rows: rows per streamed batch (bounds memory).
        wait: wait for another process writing ``output`` instead of failing with BusyError.

    Returns:
        A BuildReport with build time, index size, recall@10 and queries/s.
    """
    started = time.perf_counter()
    if metric not in METRICS:
        raise choice_error("metric", metric, METRICS)
    if not 0 < target_recall <= 1:
        raise ConfigError(f"target recall must be in (0, 1], got {target_recall}")
    if eval_queries < 0:
        raise ConfigError(f"eval_queries must be >= 0, got {eval_queries}")
    feats = open_features(features)
    column = feats.embedding_column(column)
    store_given = store
    store = list(_default_store(feats, column) if store is None else store)
    feats.require_columns(store)
    col_config = feats.column_config(column)
    dim = _column_dim(feats, column)
    output = _named(output)

    with artefact.writing_dir(
        output, kind=ARTEFACT_KIND, manifest_name=META_FILE, overwrite=overwrite, wait=wait
    ) as stage:
        plan = plan_index(kind, feats.num_rows, dim, memory)
        samples = _draw_samples(
            feats, column, _train_rows(plan, feats.num_rows), eval_queries, metric, seed, batch_rows
        )
        if samples.rows != feats.num_rows:  # null or non-finite rows: plan for what will really be indexed
            plan = plan_index(kind, samples.rows, dim, memory)
        log.info("building %s (%s) for %d x %d: %s", plan.kind, plan.factory, samples.rows, dim, plan.reason)
        index = _new_index(plan, dim, metric, samples.train[: _train_rows(plan, samples.rows)])
        samples.train = np.empty((0, dim), np.float32)  # free the sample before the add pass (a [:0] view keeps it)
        if plan.kind == "ivf":
            _reserve_ivf_lists(index, feats, column, metric, batch_rows)

        # The held-out queries stay out of the index until it is tuned, then are added last: a query that is a
        # row of the index finds itself and the graph or list around it, and leave-one-out on such rows reported
        # 0.972 where new text queries measured 0.934 (issue #16). Queries identical to an indexed row are
        # dropped from the evaluation too: they are found trivially, and a new query rarely is such a copy.
        # A flat index is exact by construction: nothing to tune or estimate, and its rows keep file order.
        held = samples.query_positions if plan.kind != "flat" else samples.query_positions[:0]
        k_eval = min(EVAL_K, samples.rows - len(held))
        heap = _faiss().ResultHeap(len(held), k_eval, keep_max=metric != "l2") if k_eval > 0 and len(held) else None
        copies = _Copies(samples.queries)
        tables, held_tables, seen = [], [], 0
        with _progress(feats.num_rows, progress, "indexing") as bar:
            for matrix, table in _usable_batches(feats, column, store, batch_rows):
                x = _prepare(matrix, metric)
                out = np.isin(np.arange(seen, seen + len(x)), held)
                seen += len(x)
                if out.any():
                    held_tables.append(table.filter(pa.array(out)))
                    x, table = x[~out], table.filter(pa.array(~out))
                if heap is not None and len(x):
                    d, i = _faiss().knn(samples.queries, x, min(k_eval, len(x)), metric=_metric_type(metric))
                    heap.add_result(_pad(d, k_eval, metric), _pad_ids(i + index.ntotal, k_eval))
                    copies.check(x)
                index.add(x)
                tables.append(table)
                bar.update(len(x) + int(out.sum()))

        params: dict[str, Any] = {}
        recall: float | None = None
        interval: list[float] | None = None
        qps: float | None = None
        n_eval = len(held)
        if heap is not None:
            heap.finalize()
            keep = ~copies.found
            n_eval = int(keep.sum())
            if n_eval:
                evaluation = Evaluation(samples.queries[keep], None, heap.I[keep], k_eval)
                params, (recall, *interval) = tune(index, evaluation, target_recall)
                qps = evaluation.queries_per_second(index)
        elif plan.kind == "flat" and len(samples.queries):
            recall, interval, n_eval = 1.0, [1.0, 1.0], len(samples.queries)
            k_qps = min(EVAL_K, samples.rows)
            qps = Evaluation(samples.queries, None, np.empty((0, k_qps)), k_qps).queries_per_second(index)
        if len(held):
            index.add(samples.queries)  # in position order, as held_tables
        ids = pa.concat_tables(tables + held_tables)
        _check_ids(ids, feats.path)
        nonfinite = samples.nonfinite.rows
        null_rows = feats.num_rows - samples.rows - nonfinite
        meta = {
            "format": INDEX_FORMAT,
            "index_kind": plan.kind,
            "factory": plan.factory,
            "metric": metric,
            "dim": dim,
            "rows": int(index.ntotal),
            "column": column,
            "stored_columns": store,
            "params": params,
            "config": col_config.to_dict(),
            "model": feats.meta.get("model", {}),
            "generation": 0,
            "source": {
                "path": str(Path(features).resolve()),
                "rows": feats.num_rows,
                "skipped_null_rows": null_rows,
                "skipped_nonfinite_rows": nonfinite,
            },
            "build": {
                "reason": plan.reason,
                "target_recall": target_recall,
                "recall_at_10": recall,
                "recall_interval": interval,
                "eval_queries": n_eval,
                "eval_duplicates": int(copies.found.sum()),
                "queries_per_second": qps,
                "created_at": _now(),
                "adds": [],
            },
        }
        index_bytes = _write_data(stage, index, ids)
        meta["build"]["seconds"] = round(time.perf_counter() - started, 3)
        stage.seal(meta)
    return BuildReport(
        output,
        plan.kind,
        plan.factory,
        metric,
        int(index.ntotal),
        dim,
        null_rows,
        meta["build"]["seconds"],
        index_bytes,
        _peak_rss_bytes(),
        recall,
        qps,
        params,
        target_recall,
        n_eval,
        plan.reason,
        _store_note(feats, store) if store_given is None else [],
        nonfinite,
        samples.nonfinite.examples,
        (interval[0], interval[1]) if interval else None,
        int(copies.found.sum()),
    )


EXACT_CHUNK_ROWS = 65536  # stored vectors decoded at a time by exact search (bounds its memory)
_NO_VECTORS = "this index (ivfpq) keeps compressed codes, not the vectors: exact search is not possible"


def _exact_search(index, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The true top-k of ``queries`` among the vectors ``index`` stores, read back in chunks."""
    faiss = _faiss()
    ivf = _ivf_of(index)
    if isinstance(index, faiss.IndexPreTransform) or "PQ" in type(ivf if ivf is not None else index).__name__:
        raise ConfigError(_NO_VECTORS)
    if ivf is not None:
        ivf.make_direct_map()  # in memory only: lets the lists be read back by position
    heap = faiss.ResultHeap(len(queries), k, keep_max=metric != "l2")
    for start in range(0, index.ntotal, EXACT_CHUNK_ROWS):
        stored = index.reconstruct_n(start, min(EXACT_CHUNK_ROWS, index.ntotal - start))
        d, i = faiss.knn(queries, stored, min(k, len(stored)), metric=_metric_type(metric))
        heap.add_result(_pad(d, k, metric), _pad_ids(i + start, k))
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


def _check_ids(ids: pa.Table, path: Path) -> None:
    column = ids.column("id")
    if pa.types.is_nested(column.type) or pa.types.is_dictionary(column.type):
        # Hits map back to rows by id, compared and printed as one value: a list or struct id is no key.
        raise InputError(f"{path}: the id column is of type {column.type}; ids must be strings or numbers")
    if column.null_count:
        raise InputError(f"{path}: {column.null_count} row(s) have a null id; every indexed row needs one")
    if pc.count_distinct(column).as_py() != len(column):
        counts = pc.value_counts(column.combine_chunks())
        repeated = [str(v["values"]) for v in counts.to_pylist() if v["counts"] > 1][:5]
        raise InputError(f"{path}: ids repeat ({', '.join(repeated)}...); ids must be unique to map search hits back")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _named(directory: str | Path) -> Path:
    """``directory`` with a name of its own: ``.`` or ``x/..`` made absolute (symlinks are left alone).

    The lock and the directory built aside sit beside the output under its name; for ``.`` they would land inside
    it (a lock no other writer of the same index takes) and the switch by rename would fail.
    """
    directory = Path(directory)
    return Path(os.path.abspath(directory)) if directory.name in ("", ".", "..") else directory


def _write_data(stage: artefact.Staging, index, ids: pa.Table) -> int:
    """Write the FAISS index and the id map into a directory being built; returns the index's size in bytes."""
    index_path = stage.path(INDEX_FILE)
    try:
        _faiss().write_index(index, str(index_path))
    except RuntimeError as exc:  # FAISS reports a failed write (disk full, ...) as a RuntimeError
        raise OutputError(f"cannot write {index_path}: {exc}") from exc
    pq.write_table(ids, stage.path(IDS_FILE))
    return index_path.stat().st_size


# ---------------------------------------------------------------------------------------------- search


@dataclass
class SearchResult:
    """Hits of a batch of queries: ``positions`` are FAISS rows (-1 where fewer than k were found)."""

    scores: np.ndarray
    positions: np.ndarray
    ids: pa.Table
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.scores)

    def hits(self, query: int = 0) -> list[dict[str, Any]]:
        """The hits of one query as dicts: rank, score, id and the stored columns."""
        keep = self.positions[query] >= 0
        rows = self.ids.take(pa.array(self.positions[query][keep])).to_pylist()
        return [
            {"rank": r + 1, "score": float(s), **row} for r, (s, row) in enumerate(zip(self.scores[query][keep], rows))
        ]

    def to_table(self, query_columns: dict[str, Sequence[Any]] | None = None) -> pa.Table:
        """Long format: one row per (query, hit) with ``query`` (its number), rank, score, id, stored columns."""
        q, rank = np.nonzero(self.positions >= 0)
        hits = self.ids.take(pa.array(self.positions[q, rank]))
        columns: dict[str, Any] = {"query": pa.array(q, pa.int64())}
        for name, values in (query_columns or {}).items():
            values = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
            columns[name] = values.take(pa.array(q))
        columns["rank"] = pa.array(rank + 1, pa.int32())
        columns["score"] = pa.array(self.scores[q, rank], pa.float32())
        for name in hits.column_names:
            columns[name] = hits.column(name)
        return pa.table(columns)


def _settings_diff(a: ExtractConfig, b: ExtractConfig) -> list[str]:
    va, vb = a.vector_settings(), b.vector_settings()
    model = a.model_difference(b)  # same settings, but another checkpoint at the model path
    return [f"{k}={va.get(k)!r} vs {vb.get(k)!r}" for k in sorted(set(va) | set(vb)) if va.get(k) != vb.get(k)] + (
        [model] if model else []
    )


class Index:
    """A loaded, verified index directory.

    Example:
        >>> index = Index.load("docs-index")
        >>> index.search("how do I reset my password", k=5).hits()
    """

    def __init__(
        self,
        directory: Path,
        faiss_index,
        ids: pa.Table,
        meta: dict[str, Any],
        device: str = "auto",
        trust_remote_code: bool = False,
    ):
        self.directory = Path(directory)
        self.trust_remote_code = trust_remote_code  # the caller's decision; index.json's own is never used
        self.faiss_index = faiss_index
        self.ids = ids
        self.meta = meta
        self.device = device
        self._extractor = None
        self._positions: dict[Any, int] | None = None
        if meta.get("params"):
            apply_params(faiss_index, meta["params"])

    # -- loading

    @classmethod
    def load(cls, directory: str | Path, device: str = "auto", trust_remote_code: bool = False) -> Index:
        """Open an index directory: every field of ``index.json`` and every file are checked before FAISS reads.

        Readers take no lock: a directory switched in by a concurrent writer (``index add``) while it was being
        read is read again, so a search never mixes two generations nor fails because of one.

        Raises:
            InputError: not an index directory, incomplete, a field of ``index.json`` missing or invalid, a file
                name that leads outside the directory, a file changed, truncated or replaced by a symlink.
            IncompatibleError: an index format this embedkit does not know (written by a newer one).
        """
        directory = Path(directory)
        for attempt in range(LOAD_ATTEMPTS):
            before = _manifest_bytes(directory)
            try:
                index, ids, meta = _read_index(directory)
            except InputError:
                if attempt + 1 < LOAD_ATTEMPTS and _manifest_bytes(directory) != before:
                    continue
                raise
            if _manifest_bytes(directory) == before:
                return cls(directory, index, ids, meta, device, trust_remote_code)
        raise InputError(f"{directory} was replaced {LOAD_ATTEMPTS} times while it was being read; try again")

    # -- facts

    @property
    def config(self) -> ExtractConfig:
        return ExtractConfig.from_stored(
            self.meta["config"],
            trust_remote_code=self.trust_remote_code,
            origin=str(self.directory / META_FILE),
            model=self.meta.get("model"),
        )

    @property
    def metric(self) -> str:
        return self.meta["metric"]

    @property
    def kind(self) -> str:
        return self.meta["index_kind"]

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def size(self) -> int:
        return int(self.faiss_index.ntotal)

    def __len__(self) -> int:
        return self.size

    @property
    def stored_columns(self) -> list[str]:
        return [c for c in self.ids.column_names if c != "id"]

    # -- embedding

    @property
    def extractor(self):
        """An Extractor with exactly the indexed column's settings (built on first use)."""
        if self._extractor is None:
            from .extract import Extractor

            self.use_extractor(Extractor(self.config, device=self.device))
        return self._extractor

    def use_extractor(self, extractor) -> None:
        """Embed queries with ``extractor`` (e.g. one already loaded); refused unless its settings match."""
        if len(extractor.config.pairs) != 1:
            raise IncompatibleError("the extractor makes several columns; the index needs one layer and one pooling")
        diff = _settings_diff(extractor.config, self.config)
        if diff:
            raise IncompatibleError(
                f"the extractor does not embed like this index ({'; '.join(diff)}); "
                f"queries must be embedded with the index's settings: {self.config.vector_settings()}"
            )
        self._extractor = extractor

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise InputError("no query given")
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise InputError(
                    f"query {i} is empty; give some text to search for"
                    if len(texts) > 1
                    else "the query is empty; give some text to search for"
                )
        return self.extractor.embed(texts)

    # -- searching

    def search(
        self,
        queries: str | Sequence[str] | np.ndarray,
        k: int = DEFAULT_K,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        exact: bool = False,
    ) -> SearchResult:
        """Nearest rows to query texts (embedded with the stored settings) or to query vectors.

        Scores: cosine similarity (cosine), inner product (ip) or Euclidean distance (l2, lower is closer).
        ``k`` above the index size is clamped (noted in ``SearchResult.notes``). ``exact``: compare with every
        stored vector (see ``search_vectors``); ``nprobe`` / ``ef_search`` override the tuned values for this call.
        """
        if isinstance(queries, np.ndarray):
            vectors = queries
        else:
            vectors = self.embed(queries)
        return self.search_vectors(vectors, k, nprobe=nprobe, ef_search=ef_search, exact=exact)

    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int = DEFAULT_K,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        exclude: np.ndarray | None = None,
        exact: bool = False,
    ) -> SearchResult:
        """Nearest rows to query vectors; ``exact`` compares every stored vector instead of the index's shortcut.

        Exact search reads the vectors the index stores (flat, hnsw, ivf keep them whole) in chunks and is
        linear in the index size: the true top-k, for checking an approximate result or for a small index.
        ConfigError for ivfpq, which keeps only compressed codes, and with nprobe / ef_search (nothing to tune).
        """
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise IncompatibleError(f"query vectors have shape {vectors.shape}; this index holds {self.dim}-d vectors")
        if not _usable_rows(vectors).all():
            raise InputError("query vectors hold NaN, infinite or overflowing values")
        k, notes = self._clamp(k, extra=0 if exclude is None else 1)
        extra = 0 if exclude is None else 1
        if exact:
            if nprobe is not None or ef_search is not None:
                raise ConfigError("exact search visits every vector: nprobe / ef-search do not apply")
            scores, positions = _exact_search(self.faiss_index, _prepare(vectors, self.metric), k + extra, self.metric)
        else:
            self._set_knobs(nprobe, ef_search)
            try:
                scores, positions = self.faiss_index.search(_prepare(vectors, self.metric), k + extra)
            finally:
                if nprobe is not None or ef_search is not None:
                    apply_params(self.faiss_index, self.meta.get("params") or {})
        if exclude is not None:
            scores, positions = _exclude(scores, positions, exclude, k)
        if self.metric == "l2":
            scores = np.sqrt(np.maximum(scores, 0))
        return SearchResult(scores, positions, self.ids, notes)

    def search_ids(self, ids: Sequence[Any], k: int = DEFAULT_K, **knobs) -> SearchResult:
        """More like this: neighbours of rows already in the index (the row itself left out)."""
        positions = np.array([self.position_of(i) for i in ids], dtype=np.int64)
        vectors = np.vstack([self._reconstruct(p) for p in positions])
        return self.search_vectors(vectors, k, exclude=positions, **knobs)

    def search_features(
        self, features: str | Path, k: int = DEFAULT_K, column: str | None = None, **knobs
    ) -> tuple[SearchResult, pa.Table]:
        """Search with the vectors of an already embedded file; refused unless it was embedded like the index."""
        feats = open_features(features)
        column = feats.embedding_column(column)
        self._check_compatible(feats, column)
        matrix, table, skipped = feats.load(column)
        if skipped:
            log.warning("%d query rows without an embedding skipped", skipped)
        return self.search_vectors(matrix, k, **knobs), table

    def search_file(
        self,
        queries: str | Path,
        output: str | Path,
        k: int = DEFAULT_K,
        *,
        text_column: str = "text",
        id_column: str | None = None,
        batch_rows: int = 1024,
        overwrite: bool = False,
        progress: bool = False,
        wait: bool = False,
        **knobs,
    ) -> dict[str, Any]:
        """Search every query of a file and write the hits to Parquet (one row per query and hit).

        ``queries`` is raw text (CSV, TSV, JSONL, Parquet, TXT; read with ``Source``) or a features Parquet
        embedded with the index's settings. Output columns: ``query`` (row number), ``query_id`` (with
        ``id_column``), ``query_text``, ``rank``, ``score``, ``id`` and the stored columns.
        ``output`` is locked for the whole run (BusyError if another process writes it, unless ``wait``) and
        written aside, then renamed: a failure or a kill leaves the previous file, if any, as it was.
        Returns counts: queries, searched, skipped (rows with no usable text) and hits.
        """
        output = Path(output)
        self._check_output(output, queries)
        with artefact.writing_file(output, overwrite=overwrite, wait=wait) as tmp:
            hits, counts, notes = self._search_all(queries, k, text_column, id_column, batch_rows, progress, knobs)
            pq.write_table(hits, tmp)
        return {**counts, "hits": hits.num_rows, "output": str(output), "notes": sorted(notes)}

    def _check_output(self, output: Path, queries: str | Path) -> None:
        # A hits file in the index directory would be deleted by the next add (and its lock file would sit in
        # the artefact); writing over the queries file would destroy the input.
        if self.directory.resolve() in output.resolve().parents:
            raise OutputError(f"{output} is inside the index directory {self.directory}; write the hits elsewhere")
        if output.resolve() == Path(queries).resolve():
            raise OutputError(f"{output} is the queries file itself; write the hits to another file")

    def _search_all(
        self,
        queries: str | Path,
        k: int,
        text_column: str,
        id_column: str | None,
        batch_rows: int,
        progress: bool,
        knobs,
    ) -> tuple[pa.Table, dict[str, int], set[str]]:
        from .sources import Source
        from .store import is_features_file

        tables, counts, notes = [], {"queries": 0, "searched": 0, "skipped": 0}, set()
        if is_features_file(queries):
            result, table = self.search_features(queries, k, **knobs)
            counts["queries"] = counts["searched"] = len(result)
            tables.append(result.to_table({"query_id": table.column("id")}))
            notes.update(result.notes)
        else:
            source = Source(queries, text_column=text_column, id_column=id_column)
            with _progress(source.total_rows() or 0, progress, "searching") as bar:
                for records in source.batches(batch_rows):
                    table, searched, res_notes = self._search_records(records, k, id_column is not None, knobs)
                    counts["queries"] += len(records)
                    counts["searched"] += searched
                    notes.update(res_notes)
                    if table is not None:
                        tables.append(table)
                    bar.update(len(records))
            counts["skipped"] = counts["queries"] - counts["searched"]
        if not tables:
            raise InputError(f"{queries}: no query could be searched ({counts['skipped']} empty or unreadable rows)")
        return pa.concat_tables(tables, promote_options="permissive"), counts, notes

    def _search_records(self, records, k: int, with_ids: bool, knobs) -> tuple[pa.Table | None, int, list[str]]:
        texts = [t if isinstance(t, str) and t.strip() else None for t in records.texts]
        texts = [t if e is None else None for t, e in zip(texts, records.parse_errors or [None] * len(texts))]
        good = [i for i, t in enumerate(texts) if t is not None]
        if not good:
            return None, 0, []
        encoded = self.extractor.encode([texts[i] for i in good])
        good = [i for i, ok in zip(good, encoded.valid) if ok]
        if not good:
            return None, 0, []
        vectors = next(iter(encoded.vectors.values()))[encoded.valid]
        result = self.search_vectors(vectors, k, **knobs)
        columns: dict[str, Any] = {"query": [records.row_numbers[i] for i in good]}
        if with_ids:
            ids = records.ids.to_pylist() if isinstance(records.ids, pa.Array) else records.ids
            columns["query_id"] = [ids[i] for i in good]
        columns["query_text"] = [texts[i] for i in good]
        return result.to_table(columns), len(good), result.notes

    def _clamp(self, k: int, extra: int = 0) -> tuple[int, list[str]]:
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        available = self.size - extra
        if available < 1:
            raise InputError(f"the index holds {self.size} row(s): nothing to return")
        if k > available:
            note = f"k={k} is more than the {available} rows the index can return; returning {available}"
            log.info(note)  # returned as a note for the caller to show; a warning too would say it twice
            return available, [note]
        return k, []

    def _set_knobs(self, nprobe: int | None, ef_search: int | None) -> None:
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
            apply_params(self.faiss_index, knobs)

    def position_of(self, value: Any) -> int:
        """The FAISS row of the item with id ``value`` (a string is converted to the id column's type)."""
        if self._positions is None:
            self._positions = {v: i for i, v in enumerate(self.ids.column("id").to_pylist())}
        key = _coerce_id(value, self.ids.schema.field("id").type)
        if key not in self._positions:
            sample = ", ".join(map(str, self.ids.column("id").slice(0, 3).to_pylist()))
            raise InputError(f"no row with id {value!r} in the index (ids look like: {sample}, ...)")
        return self._positions[key]

    def _reconstruct(self, position: int) -> np.ndarray:
        ivf = _ivf_of(self.faiss_index)
        if ivf is not None and not ivf.direct_map.type:
            ivf.make_direct_map()
        return self.faiss_index.reconstruct(int(position))

    def _check_compatible(self, feats: Features, column: str) -> None:
        diff = _settings_diff(feats.column_config(column), self.config)
        if diff:
            raise IncompatibleError(
                f"{feats.path} column {column!r} was embedded differently from the index ({'; '.join(diff)}); "
                "re-embed it with the index's settings"
            )
        dim = _column_dim(feats, column)
        if dim != self.dim:
            raise IncompatibleError(
                f"{feats.path} column {column!r} holds {dim}-d vectors; the index holds {self.dim}-d"
            )

    # -- growing

    def add(
        self,
        features: str | Path,
        column: str | None = None,
        batch_rows: int = BATCH_ROWS,
        progress: bool = False,
        wait: bool = False,
    ) -> int:
        """Add the rows of another features file embedded with the same settings; returns rows added.

        See :func:`add_to_index`: the rows are added to the index as it is on disk under its lock (which may hold
        rows another process added since this object was loaded); this object then holds the result.
        """
        grown, report = add_to_index(
            self.directory,
            features,
            column=column,
            batch_rows=batch_rows,
            progress=progress,
            wait=wait,
            device=self.device,
        )
        self.faiss_index, self.ids, self.meta, self._positions = grown.faiss_index, grown.ids, grown.meta, None
        return report.added

    def _grow(self, feats: Features, column: str | None, batch_rows: int, progress: bool) -> AddReport:
        """Add the usable rows of ``feats`` to this in-memory index (nothing is written)."""
        column = feats.embedding_column(column or self.meta["column"])
        self._check_compatible(feats, column)
        feats.require_columns(self.stored_columns)
        before = self.size
        tables, nonfinite = [], _Skipped()
        try:
            with _progress(feats.num_rows, progress, "adding") as bar:
                for matrix, table in _usable_batches(feats, column, self.stored_columns, batch_rows, nonfinite):
                    tables.append(table.cast(self.ids.schema) if table.schema != self.ids.schema else table)
                    bar.update(len(matrix))
            if not tables:
                why = f"{nonfinite.rows} hold NaN, infinite or overflowing values" if nonfinite.rows else "all are null"
                raise InputError(
                    f"{feats.path}: no row has a usable embedding in {column!r} ({feats.num_rows} rows: "
                    f"{why}); nothing to add"
                )
            new_ids = pa.concat_tables(tables)
            clash = pc.is_in(new_ids.column("id"), value_set=self.ids.column("id").combine_chunks())
            if pc.any(clash).as_py():
                repeated = new_ids.column("id").filter(clash).slice(0, 5).to_pylist()
                raise InputError(
                    f"{feats.path}: ids already in the index: {', '.join(map(str, repeated))}...; ids must stay unique"
                )
            ids = pa.concat_tables([self.ids, new_ids])
            _check_ids(ids, feats.path)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise IncompatibleError(
                f"{feats.path}: its id/stored columns do not match the index's ({self.ids.schema}): {exc}"
            ) from exc
        for matrix, _ in _usable_batches(feats, column, (), batch_rows):
            self.faiss_index.add(_prepare(matrix, self.metric))
        self.ids = ids
        self._positions = None
        added = self.size - before
        return AddReport(
            self.directory,
            added,
            self.size,
            feats.num_rows - added - nonfinite.rows,
            nonfinite.rows,
            nonfinite.examples,
        )

    def _write_generation(self, stage: artefact.Staging, feats: Features, report: AddReport) -> None:
        """Write this (grown) index as the next generation into ``stage`` and seal it."""
        meta = json.loads(json.dumps(self.meta))  # a deep copy: self.meta is replaced only by the sealed one
        meta.pop("files", None)  # seal lists the new files (a format-1 index's role-keyed entries go too)
        meta.update(format=INDEX_FORMAT, rows=self.size, generation=int(meta.get("generation", 0)) + 1)
        meta.setdefault("build", {}).setdefault("adds", []).append(
            {
                "path": str(feats.path.resolve()),
                "rows": report.added,
                "skipped_null_rows": report.skipped_null_rows,
                "skipped_nonfinite_rows": report.skipped_nonfinite_rows,
                "at": _now(),
            }
        )
        _write_data(stage, self.faiss_index, self.ids)
        self.meta = stage.seal(meta)


@dataclass
class AddReport:
    """What ``index add`` did."""

    directory: Path
    added: int
    rows: int
    skipped_null_rows: int = 0
    skipped_nonfinite_rows: int = 0
    skipped_nonfinite_ids: list[Any] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        head = f"added {self.added:,} rows to {self.directory}; it now holds {self.rows:,}"
        return [head, *_skipped_lines(self.skipped_null_rows, self.skipped_nonfinite_rows, self.skipped_nonfinite_ids)]


def add_to_index(
    directory: str | Path,
    features: str | Path,
    *,
    column: str | None = None,
    batch_rows: int = BATCH_ROWS,
    progress: bool = False,
    wait: bool = False,
    device: str = "auto",
) -> tuple[Index, AddReport]:
    """Add the rows of a features file to the index in ``directory`` (``embedkit index add``).

    The directory's lock is held throughout: the index is read from disk under it (so an add that waited for
    another builds on that one's result and no batch is lost), grown in memory, written aside as a complete new
    generation and switched in. A failure or a kill leaves the previous index as it was. Returns the grown index
    and a report.

    Raises:
        BusyError: another process is writing the index (unless ``wait``).
        InputError: not an index, or a bad features file; IncompatibleError: embedded with other settings.
    """
    directory = _named(directory)
    # Not an index (missing, another kind of directory, corrupt manifest): say so before taking a lock or writing.
    artefact.read_manifest(directory, manifest_name=META_FILE, what="index")
    feats = open_features(features)
    with artefact.writing_dir(
        directory, kind=ARTEFACT_KIND, manifest_name=META_FILE, overwrite=True, wait=wait
    ) as stage:
        index = Index.load(directory, device=device)
        report = index._grow(feats, column, batch_rows, progress)
        index._write_generation(stage, feats, report)
    return index, report


def _exclude(scores: np.ndarray, positions: np.ndarray, own: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    out_s = np.full((len(scores), k), np.nan, dtype=scores.dtype)
    out_p = np.full((len(scores), k), -1, dtype=np.int64)
    for q in range(len(scores)):
        keep = (positions[q] != own[q]) & (positions[q] >= 0)
        s, p = scores[q][keep][:k], positions[q][keep][:k]
        out_s[q, : len(s)], out_p[q, : len(p)] = s, p
    return out_s, out_p


def _coerce_id(value: Any, type_: pa.DataType) -> Any:
    if isinstance(value, str) and (pa.types.is_integer(type_) or pa.types.is_floating(type_)):
        try:
            return int(value) if pa.types.is_integer(type_) else float(value)
        except ValueError:
            raise InputError(f"id {value!r} is not a number; this index's ids are {type_}") from None
    return value


def _manifest_bytes(directory: Path) -> bytes | None:
    """The raw ``index.json`` (None when absent or not a plain file): compared before and after a read."""
    path = directory / META_FILE
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > artefact.MAX_MANIFEST_BYTES:
            return None
        return path.read_bytes()
    except OSError:
        return None


def _read_index(directory: Path) -> tuple[Any, pa.Table, dict[str, Any]]:
    """Read one generation: checked manifest, verified files, then FAISS index and id map cross-checked with it."""
    meta, (index_name, ids_name) = _checked_meta(
        directory, artefact.read_manifest(directory, manifest_name=META_FILE, what="index")
    )
    index_path = directory / index_name
    try:
        index = _faiss().read_index(str(index_path))
    except RuntimeError as exc:
        raise InputError(f"{index_path}: FAISS cannot read it: {exc}") from exc
    _check_against_faiss(directory / META_FILE, meta, index, index_name)
    try:
        ids = pq.read_table(directory / ids_name)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{directory}: the id map {ids_name} is unreadable: {exc}") from exc
    if "id" not in ids.column_names:
        raise InputError(f"{directory}: the id map {ids_name} has no 'id' column; rebuild the index")
    id_type = ids.schema.field("id").type
    if pa.types.is_nested(id_type) or pa.types.is_dictionary(id_type) or ids.column("id").null_count:
        # Search maps ids back through a dict: a list/struct id (unhashable) or a null one would fail there.
        raise InputError(
            f"{directory}: the id map {ids_name} holds null or {id_type} ids, which embedkit never "
            "writes; rebuild the index"
        )
    if ids.num_rows != index.ntotal:
        raise InputError(
            f"{directory}: the index holds {index.ntotal} vectors but the id map {ids.num_rows} rows; rebuild it"
        )
    stored = [c for c in ids.column_names if c != "id"]
    if stored != meta["stored_columns"]:
        raise InputError(
            f"{directory / META_FILE}: 'stored_columns' is {meta['stored_columns']!r} but the id map "
            f"holds {stored!r}; rebuild the index"
        )
    return index, ids, meta


def _checked_meta(directory: Path, manifest: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, str]]:
    """Check every field the code uses and verify every file; returns the meta and the two data file names.

    A format-1 index names its data files in ``files.index.name`` / ``files.ids.name``: those names get the same
    plain-name rule as any manifest entry, so none leads outside the directory.
    """
    where = directory / META_FILE
    fmt = manifest.get("format")
    if not _is_int(fmt):
        raise _field_error(where, "format", fmt, "an index format number")
    if fmt not in (1, INDEX_FORMAT):
        raise IncompatibleError(
            f"{directory} has index format {fmt}; this embedkit reads formats 1 and "
            f"{INDEX_FORMAT}: upgrade embedkit or rebuild the index"
        )
    meta = dict(manifest)
    if fmt == 1:
        entries, names = {}, []
        for role in ("index", "ids"):
            entry = manifest["files"].get(role)
            if not isinstance(entry, dict):
                raise _field_error(where, f"files.{role}", entry, "the entry of the index's data file")
            name = artefact.plain_name(entry.get("name"), where=where)
            entries[name] = entry  # read_manifest checked its sha256 and byte count
            names.append(name)
        if names[0] == names[1]:
            raise _field_error(where, "files", manifest["files"], "two different data files")
        meta["index_kind"], meta["kind"] = manifest.get("kind"), ARTEFACT_KIND  # format 1 had the FAISS kind here
    else:
        if meta.get("kind") != ARTEFACT_KIND:
            raise _field_error(where, "kind", meta.get("kind"), f"{ARTEFACT_KIND!r} (is this an embedkit index?)")
        entries, names = manifest["files"], [INDEX_FILE, IDS_FILE]
        for name in names:
            if name not in entries:
                raise InputError(f"{where}: {name} is not listed in 'files'; the index is incomplete: rebuild it")
    _check_fields(meta, where)
    for name, entry in entries.items():
        artefact.verify_file(directory / name, entry, META_FILE)
    return meta, (names[0], names[1])


def _check_fields(meta: dict[str, Any], where: Path) -> None:
    """InputError naming the first field of ``index.json`` that the code would trip over."""
    checks: list[tuple[str, Any, bool, str]] = [
        ("index_kind", meta.get("index_kind"), meta.get("index_kind") in KINDS[1:], f"one of {', '.join(KINDS[1:])}"),
        ("metric", meta.get("metric"), meta.get("metric") in METRICS, f"one of {', '.join(METRICS)}"),
        (
            "dim",
            meta.get("dim"),
            _is_int(meta.get("dim")) and 0 < meta["dim"] <= MAX_DIM,
            f"a dimension from 1 to {MAX_DIM}",
        ),
        ("rows", meta.get("rows"), _is_int(meta.get("rows")) and meta["rows"] >= 0, "a row count"),
        (
            "column",
            meta.get("column"),
            isinstance(meta.get("column"), str) and meta["column"] != "",
            "the name of the indexed column",
        ),
        (
            "stored_columns",
            meta.get("stored_columns"),
            _is_names(meta.get("stored_columns")),
            "a list of distinct column names other than 'id'",
        ),
        (
            "params",
            meta.get("params"),
            isinstance(meta.get("params"), dict),
            "an object of search parameters (nprobe, efSearch)",
        ),
        (
            "generation",
            meta.get("generation"),
            _is_int(meta.get("generation", 0)) and meta.get("generation", 0) >= 0,
            "a generation number",
        ),
        (
            "build",
            meta.get("build"),
            isinstance(meta.get("build", {}), dict) and isinstance(meta.get("build", {}).get("adds", []), list),
            "an object whose 'adds' is a list",
        ),
        ("config", meta.get("config"), isinstance(meta.get("config"), dict), "the extraction settings"),
    ]
    for name, value, ok, want in checks:
        if not ok:
            raise _field_error(where, name, value, want)
    for name, value in meta["params"].items():
        limit = MAX_STORED_EF_SEARCH if name == "efSearch" else 2**31 - 1
        if name not in PARAM_NAMES or not _is_int(value) or not 1 <= value <= limit:
            raise _field_error(
                where, f"params.{name}", value, f"a search parameter ({', '.join(PARAM_NAMES)}) from 1 to {limit}"
            )
    # The one reader of stored settings: strict types, and a stored trust_remote_code never counts.
    ExtractConfig.from_stored(meta["config"], origin=f"{where} field 'config'", model=meta.get("model"))


def _check_against_faiss(where: Path, meta: dict[str, Any], index, name: str) -> None:
    """The fields of ``index.json`` that describe the FAISS index must describe this one."""
    if index.d != meta["dim"]:
        raise InputError(
            f"{where}: 'dim' is {meta['dim']} but {name} holds {index.d}-d vectors; the index is "
            "corrupt or was edited by hand: rebuild it"
        )
    if index.metric_type != _metric_type(meta["metric"]):
        ranks = "L2 distance" if index.metric_type == _faiss().METRIC_L2 else "inner product"
        raise InputError(
            f"{where}: 'metric' is {meta['metric']!r} but {name} ranks by {ranks}; the index is corrupt "
            "or was edited by hand: rebuild it"
        )
    if index.ntotal != meta["rows"]:
        raise InputError(
            f"{where}: 'rows' is {meta['rows']} but {name} holds {index.ntotal} vectors; the index is "
            "corrupt or was edited by hand: rebuild it"
        )
    for param, value in meta["params"].items():
        ivf = _ivf_of(index) if param == "nprobe" else None
        if param == "nprobe" and (ivf is None or value > ivf.nlist) or param == "efSearch" and _hnsw_of(index) is None:
            raise InputError(
                f"{where}: 'params.{param}' = {value} does not fit {name} ({type(index).__name__}); rebuild the index"
            )


def _field_error(where: Path, name: str, value: Any, want: str) -> InputError:
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    state = "missing" if value is None else f"{shown}"
    return InputError(
        f"{where}: field {name!r} is {state}; expected {want}. The index is corrupt or was edited by hand: rebuild it"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_names(value: Any) -> bool:
    return (
        isinstance(value, list)
        and all(isinstance(v, str) and v and v != "id" for v in value)
        and len(set(value)) == len(value)
    )


def load_index(directory: str | Path, device: str = "auto", trust_remote_code: bool = False) -> Index:
    """Shorthand for ``Index.load``."""
    return Index.load(directory, device=device, trust_remote_code=trust_remote_code)
