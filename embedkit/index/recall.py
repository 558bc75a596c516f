"""Recall measurement: held-out evaluation, Wilson interval of recall@k, tuning nprobe / efSearch to a target."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from .faiss_ops import _hnsw_of, _ivf_of, apply_params

log = logging.getLogger(__name__)


DEFAULT_TARGET_RECALL = 0.95

EVAL_K = 10  # recall@10, the figure the build reports

EVAL_QUERIES = 1000  # held-out queries for recall and queries/s


# The held-out queries are kept out of the index while it is tuned (added after), so at most this fraction of
# the rows: a much smaller index than the final one would be easier to search, and the estimate optimistic.
EVAL_MAX_FRACTION = 0.1


# The tuner picks the cheapest setting whose recall@10 interval (this confidence) lies above the target, so the
# target holds for new queries and not only on average over the sample it was measured on.
RECALL_CONFIDENCE_Z = 1.96  # 95%, two-sided

EF_SEARCH_STEPS = (16, 32, 64, 128, 256, 512, 1024, 2048)


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
