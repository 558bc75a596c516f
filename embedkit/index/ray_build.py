"""``index build --engine ray``: the add pass of a build from a sharded dataset, run on Ray workers and merged.

The driver does what the local build does up to the add pass (:func:`~embedkit.index.build.build_index`: the
sampling pass, training the empty index on the sample, holding out the evaluation queries) and after it (tuning,
the held-out queries added last, the id map, re-scoring vectors, the manifest). Only the add pass moves:

1. **Survey** (one task per group of consecutive shards): each task reads its shards from the shared filesystem,
   checking each one's sha256 as every reader does, and counts its usable rows and, for IVF-flat, how many of
   them the trained coarse quantizer puts in each list. The driver learns where each group's rows start among
   all usable rows (held-out queries are picked by that position) and sizes each inverted list of the final
   index once, as the local build's counting pass does.
2. **Add** (one task per group again): each task deserialises the trained empty index (``faiss.serialize_index``
   bytes, put in the object store once), adds its rows with the local build's own function (``build.add_rows``:
   same batches, same held-out rows left out, the same exact neighbours of the held-out queries), and returns the
   serialised partial index, the rows' id tables and those neighbours.
3. **Merge** (driver, in shard order): ``merge_from`` appends each partial index (IVF lists are shifted to the
   rows' global ids; flat codes are appended in order), so the index is the one the local build makes, byte for
   byte. At most ``--workers`` groups are in flight and each result is merged and freed before the next is
   fetched, so the driver holds the growing index plus one partial.

An HNSW graph cannot be merged from graphs built apart (FAISS inserts each vector by searching the graph built so
far): ``build_index`` builds it in this process, with a note.

Helpers from :mod:`embedkit.engines.ray` are imported (``import_ray``, ``ray_session``, ``parse_workers``), not
copied; the in-order task window below is this module's own, since the embed engine runs a Ray Data actor pool.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import deque
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import ConfigError, EmbedkitError, OutputError
from ..store import Features, ShardedFeatures
from .adds import Added, add_rows, list_counts, reserve_lists
from .faiss_ops import _faiss, _ivf_of
from .plan import IndexPlan
from .rows import _usable_batches

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


def _node() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


def survey_shards(view: ShardedFeatures, trained: np.ndarray, column: str, metric: str, batch_rows: int, lists: bool):
    """Worker: the usable rows of ``view`` and, when ``lists``, how many fall in each IVF list of ``trained``."""
    rows = 0

    def counted() -> Iterator[tuple[np.ndarray, pa.Table]]:
        nonlocal rows
        for matrix, table in _usable_batches(view, column, (), batch_rows):
            rows += len(matrix)
            yield matrix, table

    if lists:
        counts = list_counts(_faiss().deserialize_index(trained), counted(), metric)
    else:
        counts = None
        for _ in counted():
            pass
    return {"rows": rows, "counts": counts, "node": _node()}


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
    return {"index": faiss.serialize_index(index), "added": added, "node": _node()}


# ---------------------------------------------------------------------------------------------- driver


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def _get(ray, ref) -> Any:
    """The result of one task; an embedkit error raised on a worker (a corrupt shard) comes back as itself."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, EmbedkitError):
            raise cause from None
        raise OutputError(
            f"a Ray index task failed ({type(cause or exc).__name__}: {_first_line(cause or exc)})"
        ) from exc
    except ray.exceptions.RayError as exc:  # a node lost for good, retries spent
        raise OutputError(f"the Ray index build failed ({type(exc).__name__}: {_first_line(exc)})") from exc


def in_order(ray, calls: list[Callable[[], Any]], window: int) -> Iterator[Any]:
    """Run the task ``calls`` (each returns an ObjectRef) with at most ``window`` in flight; results in call order.

    The results wait in Ray's object store, not here, until their turn: the driver holds one at a time.
    """
    pending: deque[Any] = deque()
    queued = iter(calls)
    try:
        for call in queued:
            pending.append(call())
            if len(pending) >= window:
                break
        while pending:
            result = _get(ray, pending.popleft())
            nxt = next(queued, None)
            if nxt is not None:
                pending.append(nxt())
            yield result
    finally:
        for ref in pending:  # a failure: the tasks still queued are of no use
            ray.cancel(ref)


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
        from ..engines.ray import ray_session

        assert isinstance(features, ShardedFeatures)  # check() said so
        lists = plan.kind == "ivf"  # as the local build: only IVF-flat lists are sized ahead
        with ray_session(self.address) as ray:
            workers = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
            groups = _shard_groups(features, workers)
            views = [shard_view(features, g) for g in groups]
            survey = ray.remote(num_cpus=1)(survey_shards)
            adder = ray.remote(num_cpus=1)(add_shards)
            blob = _faiss().serialize_index(index)
            trained = ray.put(blob)
            # The parts are read back from these bytes; FAISS merges only indexes of the same C++ type, and one
            # read back can differ from the factory's (IndexFlatIP for an IndexFlat with inner product).
            index = _faiss().deserialize_index(blob)
            del blob
            queries_ref = ray.put(queries)
            surveyed = list(
                in_order(
                    ray,
                    [partial(survey.remote, v, trained, column, metric, batch_rows, lists) for v in views],
                    workers,
                )
            )
            starts = np.concatenate([[0], np.cumsum([s["rows"] for s in surveyed])]).astype(np.int64)
            if lists:
                reserve_lists(index, np.sum([s["counts"] for s in surveyed], axis=0))
            log.info("adding %d shard groups on Ray (%d at once)", len(views), workers)

            def call(n: int) -> Callable[[], Any]:
                mine = held[(held >= starts[n]) & (held < starts[n + 1])]
                return partial(
                    adder.remote, views[n], trained, column, store, metric, int(starts[n]), mine, queries_ref,
                    k_eval, batch_rows, surveyed[n]["counts"],
                )  # fmt: skip

            merged = Added([], [], [], np.zeros(len(queries), dtype=bool), 0)
            self.groups_per_node = {}
            for result in in_order(ray, [call(n) for n in range(len(views))], workers):
                base = int(index.ntotal)
                part = _faiss().deserialize_index(result.pop("index"))
                # IVF lists carry ids: shift the part's (0..n-1) to the rows' global positions. Flat codes carry
                # none (their position is the id), so FAISS takes no shift for them.
                index.merge_from(part, base if _ivf_of(index) is not None else 0)
                del part
                added: Added = result["added"]
                merged.tables += added.tables
                merged.held_tables += added.held_tables
                merged.knn += [(d, i + base) for d, i in added.knn]
                merged.found |= added.found
                merged.positions += added.positions
                node = result["node"]
                self.groups_per_node[node] = self.groups_per_node.get(node, 0) + 1
                if bar is not None:
                    bar.update(added.positions)
        return index, merged


__all__ = ["RayAdds", "add_shards", "in_order", "shard_view", "survey_shards"]
