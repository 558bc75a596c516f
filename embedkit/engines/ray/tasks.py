"""Per-shard work at the end of a Ray job, run as Ray tasks where the shards are, so the driver reads none.

``DatasetWriter.finish`` checks every shard, gathers the int8 maxima and rewrites shards (int8 quantisation with
one scale for the whole dataset, or a column whose type differs between shards). With ``map_shards=ray_map(ray)``
those steps run as one Ray task per shard on the workers, which share the dataset's file system; the driver gets
back schemas, a few numbers per shard and the new shard records, never vectors. The run's summary (statuses,
truncated and chunked rows) is counted the same way (:func:`shard_counts`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from ...errors import EmbedkitError, OutputError

ShardMap = Callable[[Callable[..., Any], list[tuple[Any, ...]]], list[Any]]

# A shard's check or rewrite reads and writes one file: a task lost with its node is simply run again.
TASK_RETRIES = 3


def first_line(exc: BaseException) -> str:
    """The first line of an error's text (Ray's carry the worker's whole traceback), at most 300 characters."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def task_result(ray, ref, job: str) -> Any:
    """The result of one Ray task of ``job``; an embedkit error raised on a worker (a corrupt shard) comes back as
    itself, anything else as an OutputError saying which job failed."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, EmbedkitError):
            raise cause from None
        raise OutputError(
            f"a Ray {job} task failed ({type(cause or exc).__name__}: {first_line(cause or exc)})"
        ) from exc
    except ray.exceptions.RayError as exc:  # a node lost for good, retries spent
        raise OutputError(f"the Ray {job} failed ({type(exc).__name__}: {first_line(exc)})") from exc


def in_order(ray, calls: list[Callable[[], Any]], window: int, job: str) -> Iterator[Any]:
    """Run the task ``calls`` (each returns an ObjectRef) with at most ``window`` in flight; results in call order
    (:func:`task_result`).

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
            result = task_result(ray, pending.popleft(), job)
            nxt = next(queued, None)
            if nxt is not None:
                pending.append(nxt())
            yield result
    finally:
        for ref in pending:  # a failure: the tasks still queued are of no use
            ray.cancel(ref)


def ray_map(ray, cpus: float = 1.0) -> ShardMap:
    """A ``map_shards`` for ``DatasetWriter.finish`` that runs each call as a Ray task (results in input order)."""

    def run(fn: Callable[..., Any], items: list[tuple[Any, ...]]) -> list[Any]:
        task = ray.remote(num_cpus=cpus, max_retries=TASK_RETRIES)(fn)
        return list(in_order(ray, [partial(task.remote, *args) for args in items], max(1, len(items)), "dataset"))

    return run


def shard_counts(path: Path) -> dict[str, Any]:
    """The summary's counts of one finished shard (rows, statuses, truncated, chunked), from its small columns."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["status", "truncated", "n_windows"])
    statuses = pc.value_counts(table.column("status").combine_chunks()).to_pylist()
    return {
        "rows": table.num_rows,
        "truncated": int(pc.sum(table.column("truncated")).as_py() or 0),
        "chunked": int(pc.sum(pc.greater(table.column("n_windows"), 1)).as_py() or 0),
        "statuses": {str(r["values"]): int(r["counts"]) for r in statuses},
    }


__all__ = ["ShardMap", "first_line", "in_order", "ray_map", "shard_counts", "task_result"]
