"""Reading the input on the workers: a Ray Data ``Datasource`` with one read task per planned shard.

``ray.data.read_datasource(ShardDatasource(...))`` is Ray Data's own way to add a reader: the streaming
executor runs the read tasks on the cluster, ahead of and alongside the model actors, so reading overlaps
embedding and no row passes through the driver. Each read task reads its shard's fixed row range with
embedkit's ``Source`` (``read_range``, from the byte offset the counting pass recorded, so a shard in the middle
of a CSV is not found by parsing the rows before it) and yields exactly one block: the shard's rows.

A block is an Arrow table, one row per input row: ``_shard`` (the shard index), ``_rows`` (the rows the plan
gives the shard), ``_row`` (the row's number in the whole input: its id without an id column), ``_error`` (the
parse error of a malformed row) and the row's columns. Values read from CSV and JSON keep their Python type
(a JSON number where a text is expected must still become a ``not_string`` row), so those travel as one pickle
per value (``py:NAME``); Parquet columns travel as the Arrow arrays they are (``pa:NAME``). A read that fails
with an embedkit error (the file changed since the plan, a corrupt Parquet file) yields a one-row block whose
``_fail`` and ``_fail_type`` carry it to the actor, which reports it typed to the driver instead of writing.

Carrying ``_shard`` and ``_rows`` in the block lets the actor check what it was given: :func:`shards_of` splits a
batch into its shards and refuses a shard with rows missing, so a shard is never silently split or merged.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from ... import errors
from ...errors import EmbedkitError, InputError, OutputError
from ...input_files import InputFile
from ...sources import Records
from ...spec import InputSpec
from .plan import Shard, file_spec

# Column names of a block besides the input's own columns.
SHARD, ROWS, ROW, ERROR, FAIL, FAIL_TYPE = "_shard", "_rows", "_row", "_error", "_fail", "_fail_type"


def _column(values: list[object] | pa.Array, name: str) -> tuple[str, pa.Array]:
    if isinstance(values, pa.Array):
        return f"pa:{name}", values
    return f"py:{name}", pa.array([pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL) for v in values], pa.binary())


def _values(column: pa.ChunkedArray | pa.Array, name: str) -> list[object] | pa.Array:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return array if name.startswith("pa:") else [pickle.loads(b) for b in array.to_pylist()]


def shard_block(shard: Shard, records: Records) -> pa.Table:
    """One shard's rows as a block; ``records`` are numbered by row of its file."""
    n = len(records)
    columns = {
        SHARD: pa.array([shard.index] * n, pa.int64()),
        ROWS: pa.array([shard.stop - shard.start] * n, pa.int64()),
        ROW: pa.array([shard.first_row + r - shard.start for r in records.row_numbers], pa.int64()),
        ERROR: pa.array(records.parse_errors, pa.string()),
        FAIL: pa.nulls(n, pa.string()),
        FAIL_TYPE: pa.nulls(n, pa.string()),
    }
    named = [("text", records.texts), *([("id", records.ids)] if records.ids is not None else [])]
    for name, values in [*named, *((f"keep:{k}", v) for k, v in records.keep.items())]:
        key, array = _column(values, name)
        columns[key] = array
    return pa.table(columns)


def failed_block(shard: Shard, exc: EmbedkitError) -> pa.Table:
    """A one-row block that carries a read's embedkit error to the actor (and from it, typed, to the driver)."""
    return pa.table(
        {
            SHARD: pa.array([shard.index], pa.int64()),
            ROWS: pa.array([shard.stop - shard.start], pa.int64()),
            ROW: pa.array([shard.first_row], pa.int64()),
            ERROR: pa.nulls(1, pa.string()),
            FAIL: pa.array([str(exc)], pa.string()),
            FAIL_TYPE: pa.array([type(exc).__name__], pa.string()),
        }
    )


def read_shard(spec: dict[str, Any], file: InputFile, shard: Shard) -> list[pa.Table]:
    """The read task of one shard (runs on a Ray worker): its rows, or its embedkit error, as one block."""
    try:
        source = file_spec(InputSpec(**spec), file).source()
        records = source.read_range(0, shard.start, shard.stop, shard.mark)
        if len(records) != shard.stop - shard.start:
            raise InputError(
                f"input file changed during the job: rows {shard.start}-{shard.stop} of {file} are not where the "
                f"plan put them ({len(records)} rows there now); run again with --overwrite"
            )
        return [shard_block(shard, records)]
    except EmbedkitError as exc:
        return [failed_block(shard, exc)]


def shards_of(batch: pa.Table) -> Iterator[tuple[int, Records | EmbedkitError]]:
    """The shards of a batch an actor was given, each whole: ``(index, rows)``, or ``(index, error)`` for a read
    that failed or a shard that arrived in pieces (Ray Data re-cutting blocks; the engine configures it not to)."""
    indexes = batch.column(SHARD).to_pylist()
    starts = [i for i in range(len(indexes)) if i == 0 or indexes[i] != indexes[i - 1]]
    for start, stop in zip(starts, [*starts[1:], len(indexes)]):
        part = batch.slice(start, stop - start)
        index, expected = indexes[start], part.column(ROWS)[0].as_py()
        fail = part.column(FAIL)[0].as_py()
        if fail is not None:
            error_type = getattr(errors, str(part.column(FAIL_TYPE)[0].as_py()), None)
            if not (isinstance(error_type, type) and issubclass(error_type, EmbedkitError)):
                error_type = EmbedkitError
            yield index, error_type(fail)
        elif part.num_rows != expected or indexes.count(index) != part.num_rows:
            yield (
                index,
                OutputError(
                    f"shard {index} reached a model actor in pieces ({part.num_rows} of its {expected} rows in one "
                    "call): nothing was written for it, so the dataset cannot hold a partial shard; this is a bug "
                    "(Ray Data re-cut a block), please report it"
                ),
            )
        else:
            yield index, _records(part)


def _records(part: pa.Table) -> Records:
    columns = {name: part.column(name) for name in part.column_names if name[:3] in ("py:", "pa:")}
    by_name = {name[3:]: _values(column, name) for name, column in columns.items()}
    ids = by_name.get("id")
    return Records(
        row_numbers=part.column(ROW).to_pylist(),
        texts=list(by_name["text"]),
        ids=ids,
        keep={name.removeprefix("keep:"): v for name, v in by_name.items() if name.startswith("keep:")},
        parse_errors=part.column(ERROR).to_pylist(),
    )


class ShardDatasource(Datasource):
    """The planned shards still to do as a Ray Data source: one read task, and one block, per shard.

    Args:
        spec: the input spec as plain values (``plan.spec_to_dict``).
        files: the input's files, in plan order (paths or ``RemoteFile``: both travel to the workers).
        shards: the shards to read.
    """

    def __init__(self, spec: dict[str, Any], files: list[InputFile], shards: list[Shard]) -> None:
        super().__init__()
        self.spec, self.files, self.shards = spec, files, shards

    def get_name(self) -> str:
        return "EmbedkitShards"

    def estimate_inmemory_data_size(self) -> int:
        return sum(s.size for s in self.shards)

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        # One task per shard whatever the parallelism asked for: a shard is the unit of output and of resume.
        # Each task holds its own file and shard only, so tasks stay small however many files the input has.
        # (per_task_row_limit is only set by a limit() downstream, which this pipeline has none of; passed on so
        # that Ray keeps its meaning, and only when set, for Ray versions without it.)
        limit = {"per_task_row_limit": per_task_row_limit} if per_task_row_limit is not None else {}
        return [
            ReadTask(
                functools.partial(read_shard, self.spec, self.files[shard.file], shard),
                BlockMetadata(
                    num_rows=shard.stop - shard.start,
                    size_bytes=int(shard.size),
                    exec_stats=None,
                    input_files=(str(self.files[shard.file]),),
                ),
                **limit,
            )
            for shard in self.shards
        ]


__all__ = ["ShardDatasource", "failed_block", "read_shard", "shard_block", "shards_of"]
