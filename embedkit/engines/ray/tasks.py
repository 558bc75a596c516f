"""Per-shard work at the end of a Ray job, run as Ray tasks where the shards are, so the driver reads none.

``DatasetWriter.finish`` checks every shard, gathers the int8 maxima and rewrites shards (int8 quantisation with
one scale for the whole dataset, or a column whose type differs between shards). With ``map_shards=ray_map(ray)``
those steps run as one Ray task per shard on the workers, which share the dataset's file system; the driver gets
back schemas, a few numbers per shard and the new shard records, never vectors. The run's summary (statuses,
truncated and chunked rows) is counted the same way (:func:`shard_counts`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import EmbedkitError

ShardMap = Callable[[Callable[..., Any], list[tuple[Any, ...]]], list[Any]]

# A shard's check or rewrite reads and writes one file: a task lost with its node is simply run again.
TASK_RETRIES = 3


def ray_map(ray, cpus: float = 1.0) -> ShardMap:
    """A ``map_shards`` for ``DatasetWriter.finish`` that runs each call as a Ray task (results in input order)."""

    def run(fn: Callable[..., Any], items: list[tuple[Any, ...]]) -> list[Any]:
        if not items:
            return []
        task = ray.remote(num_cpus=cpus, max_retries=TASK_RETRIES)(fn)
        try:
            return ray.get([task.remote(*args) for args in items])
        except ray.exceptions.RayTaskError as exc:
            # A corrupt shard is an embedkit error on the worker; say it as such, not as a Ray traceback.
            if isinstance(exc.cause, EmbedkitError):
                raise exc.cause from None
            raise

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


__all__ = ["ShardMap", "ray_map", "shard_counts"]
