"""The add pass of ``index build``: every usable row but the held-out queries goes into the trained index, and the
exact neighbours of the held-out queries are kept on the way (for recall). :class:`LocalAdds` runs it in this
process; :class:`~embedkit.index.ray_build.RayAdds` runs the same :func:`add_rows` on Ray workers, shard group by
shard group, and merges the parts."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from ..store import Features
from .faiss_ops import _faiss, _ivf_of, _metric_type, _prepare
from .plan import IndexPlan
from .recall import _Copies
from .rows import _draw_samples, _Samples, _usable_batches


def _reserve_ivf_lists(index, features: Features, column: str, metric: str, batch_rows: int) -> None:
    """Size each inverted list of an IVF-flat index to its final length before the vectors are added.

    FAISS appends to its lists by growing each std::vector, which doubles its capacity: an IVF-flat index of
    0.9 GB of vectors measured 1.5 GB of RSS after its adds, and 1,000,000 x 768 (2.9 GB) peaked near 9 GB.
    Counting the list of every row first (one more read of the file and one coarse-quantizer search per row)
    lets each list allocate once.
    """
    reserve_lists(index, list_counts(index, _usable_batches(features, column, (), batch_rows), metric))


def list_counts(index, batches: Iterable[tuple[np.ndarray, Any]], metric: str) -> np.ndarray:
    """How many of the rows of ``batches`` the coarse quantizer of IVF ``index`` puts in each list."""
    ivf = _ivf_of(index)
    counts = np.zeros(ivf.nlist, dtype=np.int64)
    for matrix, _ in batches:
        _, lists = ivf.quantizer.search(_prepare(matrix, metric), 1)
        counts += np.bincount(lists[:, 0][lists[:, 0] >= 0], minlength=ivf.nlist)
    return counts


def reserve_lists(index, counts: np.ndarray) -> None:
    """Give each inverted list of ``index`` room for ``counts`` more entries. Resizing to the count and back keeps
    that capacity (std::vector does not shrink); a count that differs from the add's own assignment only costs a
    reallocation, never a result."""
    ivf = _ivf_of(index)
    for list_no in np.flatnonzero(counts):
        size = int(ivf.invlists.list_size(int(list_no)))
        ivf.invlists.resize(int(list_no), size + int(counts[list_no]))
        ivf.invlists.resize(int(list_no), size)


@dataclass
class Added:
    """What adding some rows to an index left beside the vectors: the rows' id tables (the held-out queries'
    apart, added last), the exact neighbours of the held-out queries among the rows (per batch: distances and
    positions in the index they were added to), which queries have an exact copy among them, and how many usable
    rows were passed (held-out ones included)."""

    tables: list[pa.Table]
    held_tables: list[pa.Table]
    knn: list[tuple[np.ndarray, np.ndarray]]
    found: np.ndarray
    positions: int


def add_rows(
    index,
    batches: Iterable[tuple[np.ndarray, pa.Table]],
    first: int,
    held: np.ndarray,
    queries: np.ndarray,
    k_eval: int,
    metric: str,
    bar: Any = None,
) -> Added:
    """The add pass of a build over ``batches`` (usable rows; ``first`` is the position of their first row among
    all usable rows of the features): every row but the held-out queries (positions ``held``) goes into ``index``.

    One function for the local build and for each shard group of the Ray build (:mod:`.ray_build`), so both add
    the same rows in the same batches and find the same exact neighbours.
    """
    copies = _Copies(queries)
    tables, held_tables, knn, seen = [], [], [], first
    for matrix, table in batches:
        x = _prepare(matrix, metric)
        out = np.isin(np.arange(seen, seen + len(x)), held)
        seen += len(x)
        if out.any():
            held_tables.append(table.filter(pa.array(out)))
            x, table = x[~out], table.filter(pa.array(~out))
        if k_eval > 0 and len(held) and len(x):
            d, i = _faiss().knn(queries, x, min(k_eval, len(x)), metric=_metric_type(metric))
            knn.append((d, i + index.ntotal))
            copies.check(x)
        index.add(x)
        tables.append(table)
        if bar is not None:
            bar.update(len(x) + int(out.sum()))
    return Added(tables, held_tables, knn, copies.found, seen - first)


class Adds(Protocol):
    """Who reads the vectors of a build (its sampling and add passes): :class:`LocalAdds`, or the Ray workers
    (:mod:`.ray_build`)."""

    def check(self, features: Features) -> None:
        """Refuse what cannot run before anything is written (ConfigError)."""
        ...

    def running(self) -> AbstractContextManager[Any]:
        """Held for the whole build (the Ray session)."""
        ...

    def draw_samples(
        self,
        features: Features,
        column: str,
        train_rows: int,
        eval_queries: int,
        metric: str,
        seed: int,
        batch_rows: int,
    ) -> _Samples:
        """The sampling pass (:func:`~embedkit.index.rows._draw_samples`)."""
        ...

    def add(
        self,
        index,
        plan: IndexPlan,
        features: Features,
        column: str,
        store: list[str],
        metric: str,
        held: np.ndarray,
        queries: np.ndarray,
        k_eval: int,
        batch_rows: int,
        bar: Any,
    ) -> tuple[Any, Added]:
        """Add the usable rows of ``features`` but the held-out ones to the trained ``index``; returns the index
        holding them (the same object, or an equal one rebuilt from parts) and what the pass found."""
        ...


class LocalAdds:
    """The sampling and add passes in this process, streaming the features batch by batch."""

    def check(self, features: Features) -> None:
        pass

    def running(self) -> AbstractContextManager[Any]:
        return nullcontext()

    def draw_samples(
        self,
        features: Features,
        column: str,
        train_rows: int,
        eval_queries: int,
        metric: str,
        seed: int,
        batch_rows: int,
    ) -> _Samples:
        return _draw_samples(features, column, train_rows, eval_queries, metric, seed, batch_rows)

    def add(
        self,
        index,
        plan: IndexPlan,
        features: Features,
        column: str,
        store: list[str],
        metric: str,
        held: np.ndarray,
        queries: np.ndarray,
        k_eval: int,
        batch_rows: int,
        bar: Any,
    ) -> tuple[Any, Added]:
        if plan.kind == "ivf":
            _reserve_ivf_lists(index, features, column, metric, batch_rows)
        batches = _usable_batches(features, column, store, batch_rows)
        return index, add_rows(index, batches, 0, held, queries, k_eval, metric, bar)
