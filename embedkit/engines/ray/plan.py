"""The shard plan of a Ray embed job: which input rows each output shard holds, fixed before any work starts.

A shard is a fixed row range of one input file: shard ``k`` of a file covers its rows ``[k*R, (k+1)*R)``, and
shards are numbered in input order across files. The plan depends only on the files and their row counts, so
a resumed job computes the same plan and redoes exactly the shards missing from the dataset. Shards never span
two files, so that each is read by one worker from one file.

Row counts come from metadata where the format has it (Parquet footers) and, for line formats (CSV, TSV,
JSONL, text), from one counting task per file that runs on the cluster: the driver never reads the data rows.
The count uses embedkit's own reader (``Source``), so it agrees with what the workers read, malformed rows
included.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ...sources import Source, detect_format
from ...spec import InputSpec


@dataclass(frozen=True)
class Shard:
    """One output shard: rows ``[start, stop)`` of input file ``file`` (its position in the input), whose
    first row is row ``first_row`` of the whole input (the id of rows without an id column)."""

    index: int
    file: int
    start: int
    stop: int
    first_row: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def file_spec(spec: InputSpec, path: Path) -> InputSpec:
    """The input spec of one of the input's files (a worker opens one file at a time)."""
    return InputSpec(str(path), spec.format, spec.text_column, spec.id_column, spec.keep, spec.keep_text)


def spec_to_dict(spec: InputSpec) -> dict[str, Any]:
    """An input spec as plain values, for a Ray task or actor to rebuild."""
    return {**asdict(spec), "path": str(spec.path), "keep": list(spec.keep)}


def count_rows(spec: dict[str, Any], path: str) -> int:
    """Rows of one line-format file as embedkit's reader sees them (run as a Ray task, next to the data)."""
    source = file_spec(InputSpec(**spec), Path(path)).source()
    return sum(len(records) for records in source.batches(65536))


def input_identity(source: Source) -> list[dict[str, Any]]:
    """Path, size and modification time of each input file: what a resume checks the input against.

    Stat data, not a digest: hashing the input would make the driver read all of it, which is what the Ray
    engine is built to avoid. A file rewritten in place with the same size and mtime goes unnoticed.
    """
    return [
        {"path": str(p.resolve()), "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in source.files
    ]


def row_counts(ray, spec: InputSpec, source: Source) -> list[int]:
    """Rows per input file: Parquet from its footer here, line formats counted by Ray tasks on the cluster."""
    counts: dict[int, Any] = {}
    counter = ray.remote(count_rows).options(num_cpus=1, max_retries=3)
    spec_dict = spec_to_dict(spec)
    for i, path in enumerate(source.files):
        if detect_format(path, spec.format) == "parquet":
            import pyarrow.parquet as pq

            counts[i] = pq.ParquetFile(path).metadata.num_rows
        else:
            counts[i] = counter.remote(spec_dict, str(path))
    refs = {i: ref for i, ref in counts.items() if not isinstance(ref, int)}
    if refs:
        for i, value in zip(refs, ray.get(list(refs.values()))):
            counts[i] = value
    return [int(counts[i]) for i in range(len(source.files))]


def plan(counts: list[int], shard_rows: int) -> list[Shard]:
    """The shards of files with these row counts, ``shard_rows`` rows each (fewer at the end of a file)."""
    shards: list[Shard] = []
    first_row = 0
    for file, n in enumerate(counts):
        for start in range(0, n, shard_rows):
            stop = min(n, start + shard_rows)
            shards.append(Shard(len(shards), file, start, stop, first_row + start))
        first_row += n
    return shards


__all__ = ["Shard", "count_rows", "file_spec", "input_identity", "plan", "row_counts", "spec_to_dict"]
