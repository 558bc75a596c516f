"""``index build --engine ray``: the reading passes of a build from a sharded dataset, run on Ray workers.

The driver does what the local build does (:func:`~embedkit.index.build.build_index`): plan, train the empty index
on a sample, hold out the evaluation queries, tune, add the held-out queries last, write the id map, re-scoring
vectors and manifest. What reads the vectors moves to Ray tasks, one per group of consecutive shards, each
reading its shards from the shared filesystem and checking each one's sha256 before it reads it, as every reader
does; the driver reads no shard:

1. **Count** each group's usable rows (and the rows skipped for NaN or overflowing values). The sample is drawn
   by position among the usable rows from the row count alone (``rows.sample_positions``), so the driver now
   knows which group holds which sampled row.
2. **Pick** the sampled rows: each group returns its training and query rows (``rows.pick_rows``, the local
   sampling pass's function); the driver trains the index on them as the local build does.
3. **Lists** (IVF-flat only): each group counts how many of its rows the trained coarse quantizer puts in each
   list, so the driver sizes each list of the final index once, as the local build's counting pass does.
4. **Add**: each group deserialises the trained empty index (``faiss.serialize_index`` bytes, put in the object
   store once), adds its rows with the local build's own function (``adds.add_rows``: same batches, same held-out
   rows left out, the same exact neighbours of the held-out queries), and returns the serialised partial index,
   the rows' id tables and those neighbours.
5. **Merge** (driver, in shard order): ``merge_from`` appends each partial index (IVF lists are shifted to the
   rows' global ids; flat codes are appended in order), so the index is the one the local build makes, byte for
   byte. At most ``--workers`` groups are in flight and each result is merged and freed before the next is
   fetched, so the driver holds the growing index plus one partial.

An HNSW graph cannot be merged from graphs built apart (FAISS inserts each vector by searching the graph built so
far): ``build_index`` adds its rows in this process, with a note (the sample is still drawn on the workers).

Helpers from :mod:`embedkit.engines.ray` are imported (``import_ray``, ``ray_session``, ``parse_workers``), not
copied; the in-order task window below is this module's own, since the embed engine runs a Ray Data actor pool.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np

from ..engines.ray.tasks import in_order
from ..errors import ConfigError
from ..store import Features, ShardedFeatures
from .adds import Added, add_rows, list_counts, reserve_lists
from .faiss_ops import _faiss, _ivf_of
from .plan import IndexPlan
from .rows import _Samples, _Skipped, _usable_batches, gather_samples, pick_rows, sample_positions

log = logging.getLogger(__name__)

# Rows one task adds at most (consecutive shards grouped up to it): large enough that deserialising the trained
# index and sending the partial back are small beside the adds, small enough that the groups spread over the
# workers (at least GROUPS_PER_WORKER groups a worker when the dataset allows).
TASK_ROWS = 131_072
GROUPS_PER_WORKER = 4


def _shard_groups(features: ShardedFeatures, workers: int) -> list[list[int]]:
    """Consecutive shards grouped into tasks of about ``rows / (workers * GROUPS_PER_WORKER)`` rows at most."""
    target = max(1, min(TASK_ROWS, math.ceil(features.num_rows / (workers * GROUPS_PER_WORKER))))
    groups: list[list[int]] = []
    rows = 0
    for shard in features.manifest.shards:
        if not groups or rows + shard.rows > target:
            groups.append([])
            rows = 0
        groups[-1].append(shard.index)
        rows += shard.rows
    return groups


def shard_view(features: ShardedFeatures, shards: list[int]) -> ShardedFeatures:
    """``features`` restricted to ``shards`` (consecutive): what a worker reads. Nothing is marked verified, so the
    worker checks each shard's sha256 itself before reading it."""
    chosen = [features.manifest.shards[i] for i in shards]
    manifest = features.manifest.model_copy(update={"shards": chosen, "rows": sum(s.rows for s in chosen)})
    return dataclasses.replace(features, manifest=manifest, num_rows=manifest.rows, _verified=set())


# ---------------------------------------------------------------------------------------------- worker tasks


def _where() -> dict[str, Any]:
    """The Ray node this task ran on, and its worker process's peak RSS so far (a worker runs many tasks)."""
    import resource

    import ray

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"node": str(ray.get_runtime_context().get_node_id()), "rss": int(rss)}


def count_rows(view: ShardedFeatures, column: str, batch_rows: int) -> dict[str, Any]:
    """Worker: the usable rows of ``view``, and those skipped for values no search could rank."""
    skipped, rows = _Skipped(), 0
    for matrix, _ in _usable_batches(view, column, (), batch_rows, skipped):
        rows += len(matrix)
    return {"rows": rows, "skipped": skipped, **_where()}


def pick_shards(
    view: ShardedFeatures, column: str, batch_rows: int, first: int, query_set: np.ndarray, train_set: np.ndarray
) -> dict[str, Any]:
    """Worker: the sampled rows of ``view`` (its first usable row at position ``first``)."""
    picked = pick_rows(_usable_batches(view, column, (), batch_rows), first, query_set, train_set)
    return {"picked": picked, **_where()}


def count_lists(view: ShardedFeatures, trained: np.ndarray, column: str, metric: str, batch_rows: int):
    """Worker: how many usable rows of ``view`` fall in each IVF list of ``trained``."""
    counts = list_counts(_faiss().deserialize_index(trained), _usable_batches(view, column, (), batch_rows), metric)
    return {"counts": counts, **_where()}


def add_shards(
    view: ShardedFeatures,
    trained: np.ndarray,
    column: str,
    store: list[str],
    metric: str,
    first: int,
    held: np.ndarray,
    queries: np.ndarray,
    k_eval: int,
    batch_rows: int,
    counts: np.ndarray | None,
) -> dict[str, Any]:
    """Worker: add the usable rows of ``view`` (the first at position ``first``) to a copy of the trained index."""
    faiss = _faiss()
    index = faiss.deserialize_index(trained)
    if counts is not None:
        reserve_lists(index, counts)
    added = add_rows(index, _usable_batches(view, column, store, batch_rows), first, held, queries, k_eval, metric)
    return {"index": faiss.serialize_index(index), "added": added, **_where()}


# ---------------------------------------------------------------------------------------------- driver


class RayAdds:
    """The add pass of ``build_index`` on Ray (``engine=RayAdds(...)``); see the module's description.

    Args:
        address: Ray cluster to join (None: a local instance, or ``$RAY_ADDRESS``; ``auto``; ``HOST:PORT``).
        workers: tasks in flight at once [default: the cluster's CPUs]; each reserves one CPU.
    """

    def __init__(self, address: str | None = None, workers: int | str | None = None) -> None:
        from ..engines.ray import parse_workers

        parsed = parse_workers(workers)
        if isinstance(parsed, tuple):
            raise ConfigError(
                f"index build --engine ray takes --workers N (tasks at once), not MIN:MAX; got {workers!r}"
            )
        self.address, self.workers = address, parsed
        #: Shard groups added by each Ray node in the last build: where the work went.
        self.groups_per_node: dict[str, int] = {}
        #: The largest peak RSS a worker process reported in the last build.
        self.worker_peak_rss_bytes = 0
        self._ray: Any = None
        self._tasks: dict[str, Any] = {}
        self._window = 1
        self._views: list[ShardedFeatures] = []
        self._starts = np.zeros(1, dtype=np.int64)

    def check(self, features: Features) -> None:
        """Refuse what cannot run before anything is written (ConfigError)."""
        from ..engines.ray import _check_reachable, import_ray

        ray = import_ray()
        if not isinstance(features, ShardedFeatures):
            raise ConfigError(
                f"--engine ray builds from a sharded dataset directory (`embedkit embed -o DIR/`), whose shards the "
                f"workers read themselves; {features.path} is one file: build it with --engine local"
            )
        if self.address not in (None, "auto", "local") and not ray.is_initialized():
            _check_reachable(self.address)

    @contextmanager
    def running(self) -> Iterator[None]:
        """One Ray session for the whole build (joined or started here, shut down after if started here)."""
        from ..engines.ray import MAX_TASK_RETRIES, ray_session

        with ray_session(self.address) as ray:
            self._ray = ray
            # SPREAD: Ray's default packs short tasks on the driver's node while it has room, which leaves the other
            # nodes' disks and cores idle; these tasks are all reading, so they go to every node in turn. A task lost
            # with its worker or node is run again (it only reads and returns), as the embed engine's shards are.
            self._tasks = {
                fn.__name__: ray.remote(num_cpus=1, scheduling_strategy="SPREAD", max_retries=MAX_TASK_RETRIES)(fn)
                for fn in (count_rows, pick_shards, count_lists, add_shards)
            }
            try:
                yield
            finally:
                self._ray = None

    def _run(self, name: str, calls: list[tuple[Any, ...]]) -> Iterator[dict[str, Any]]:
        """Task ``name`` once per argument tuple, ``workers`` at a time; results in order, placement recorded."""
        ray, task = self._ray, self._tasks[name]
        for result in in_order(ray, [partial(task.remote, *args) for args in calls], self._window, "index build"):
            self.worker_peak_rss_bytes = max(self.worker_peak_rss_bytes, result["rss"])
            if name == "add_shards":
                self.groups_per_node[result["node"]] = self.groups_per_node.get(result["node"], 0) + 1
            yield result

    def _in_group(self, positions: np.ndarray, n: int) -> np.ndarray:
        """The ``positions`` (among all usable rows) that fall in shard group ``n``."""
        return positions[(positions >= self._starts[n]) & (positions < self._starts[n + 1])]

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
        """The local build's sample (``rows._draw_samples``), read by the workers: a count pass, then a pick pass."""
        assert isinstance(features, ShardedFeatures) and self._ray is not None  # check() and running() did
        self._window = self.workers or max(1, int(self._ray.cluster_resources().get("CPU", 1)))
        self._views = [shard_view(features, g) for g in _shard_groups(features, self._window)]
        self.groups_per_node, self.worker_peak_rss_bytes = {}, 0
        counted = list(self._run("count_rows", [(v, column, batch_rows) for v in self._views]))
        self._starts = np.concatenate([[0], np.cumsum([c["rows"] for c in counted])]).astype(np.int64)
        skipped = _Skipped(sum(c["skipped"].rows for c in counted))
        skipped.examples = [e for c in counted for e in c["skipped"].examples][:5]
        query_set, train_set = sample_positions(features.num_rows, train_rows, eval_queries, seed)
        calls = [
            (view, column, batch_rows, int(self._starts[n]), self._in_group(query_set, n), self._in_group(train_set, n))
            for n, view in enumerate(self._views)
        ]
        picked = [r["picked"] for r in self._run("pick_shards", calls)]
        return gather_samples(features, column, metric, picked, skipped)

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
        assert self._ray is not None  # draw_samples() ran: groups and their first rows are known
        faiss, ray, views, starts = _faiss(), self._ray, self._views, self._starts
        blob = faiss.serialize_index(index)
        trained = ray.put(blob)
        # The parts are read back from these bytes; FAISS merges only indexes of the same C++ type, and one read
        # back can differ from the factory's (IndexFlatIP for an IndexFlat with inner product).
        index = faiss.deserialize_index(blob)
        del blob
        counts: list[np.ndarray | None] = [None] * len(views)
        if plan.kind == "ivf":  # as the local build: only IVF-flat lists are sized ahead
            found = [
                r["counts"] for r in self._run("count_lists", [(v, trained, column, metric, batch_rows) for v in views])
            ]
            reserve_lists(index, np.sum(found, axis=0))
            counts = list(found)
        log.info("adding %d shard groups on Ray (%d at once)", len(views), self._window)
        queries_ref = ray.put(queries)
        calls: list[tuple[Any, ...]] = []
        for n, view in enumerate(views):
            mine = self._in_group(held, n)
            calls.append(
                (view, trained, column, store, metric, int(starts[n]), mine, queries_ref, k_eval, batch_rows, counts[n])
            )
        merged = Added([], [], [], np.zeros(len(queries), dtype=bool), 0)
        for result in self._run("add_shards", calls):
            base = int(index.ntotal)
            part = faiss.deserialize_index(result.pop("index"))
            # IVF lists carry ids: shift the part's (0..n-1) to the rows' global positions. Flat codes carry none
            # (their position is the id), so FAISS takes no shift for them.
            index.merge_from(part, base if _ivf_of(index) is not None else 0)
            del part
            added: Added = result["added"]
            merged.tables += added.tables
            merged.held_tables += added.held_tables
            merged.knn += [(d, i + base) for d, i in added.knn]
            merged.found |= added.found
            merged.positions += added.positions
            if bar is not None:
                bar.update(added.positions)
        return index, merged


__all__ = ["RayAdds", "add_shards", "count_lists", "count_rows", "pick_shards", "shard_view"]
