"""The shard plan of a Ray embed job: which input rows each output shard holds, fixed before any work starts.

A shard is a fixed row range of one input file: shard ``k`` of a file covers its rows ``[k*R, (k+1)*R)``, and
shards are numbered in input order across files. The plan depends only on the files and their row counts, so
a resumed job computes the same plan and redoes exactly the shards missing from the dataset. Shards never span
two files, so that each is read by one worker from one file.

Row counts come from metadata where the format has it (Parquet footers) and, for line formats (CSV, TSV,
JSONL, text), from one counting task per file that runs on the cluster: the driver never reads the data rows.
The count uses embedkit's own reader (``Source.count``), so it agrees with what the workers read, malformed rows
included, and records where each shard's first row starts (byte offset and line number): a shard's read task
starts there instead of parsing the file up to it, so a file is parsed about twice in all, not once per shard.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ...input_files import InputFile, RemoteFile, file_size
from ...sources import Mark, Source
from ...spec import InputSpec


@dataclass(frozen=True)
class Shard:
    """One output shard: rows ``[start, stop)`` of input file ``file`` (its position in the input), whose
    first row is row ``first_row`` of the whole input (the id of rows without an id column). ``offset`` and
    ``line`` say where its first row starts in a line-format file (-1: unknown, or Parquet); ``size`` is its
    approximate size in bytes (its share of the file), for Ray Data's metadata."""

    index: int
    file: int
    start: int
    stop: int
    first_row: int
    offset: int = -1
    line: int = 0
    size: int = 0

    @property
    def mark(self) -> Mark | None:
        return (self.offset, self.line) if self.offset >= 0 else None

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def file_spec(spec: InputSpec, path: InputFile) -> InputSpec:
    """The input spec of one of the input's files (a worker opens one file at a time; a URI stays one)."""
    return InputSpec(str(path), spec.format, spec.text_column, spec.id_column, spec.keep, spec.keep_text)


def spec_to_dict(spec: InputSpec) -> dict[str, Any]:
    """An input spec as plain values, for a Ray task or actor to rebuild."""
    return {**asdict(spec), "path": str(spec.path), "keep": list(spec.keep)}


def count_rows(spec: dict[str, Any], path: InputFile, shard_rows: int) -> tuple[int, list[Mark | None]]:
    """Rows of one line-format file as embedkit's reader sees them, and where each shard starts (run as a Ray
    task, next to the data)."""
    return file_spec(InputSpec(**spec), path).source().count(0, shard_rows)


def input_identity(source: Source) -> list[dict[str, Any]]:
    """Path, size and modification time of each input file: what a resume checks the input against.

    Stat data, not a digest: hashing the input would make the driver read all of it, which is what the Ray
    engine is built to avoid. A file rewritten in place with the same size and mtime goes unnoticed.
    """
    return [_identity(p) for p in source.files]


def _identity(p: InputFile) -> dict[str, Any]:
    if isinstance(p, RemoteFile):
        return {"path": p.uri, "size": p.size, "mtime_ns": p.mtime_ns}
    return {"path": str(p.resolve()), "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns}


def row_counts(ray, spec: InputSpec, source: Source, shard_rows: int) -> tuple[list[int], list[list[Mark | None]]]:
    """Rows per input file and where its shards start: Parquet from its footer here, line formats counted by Ray
    tasks on the cluster."""
    counts: dict[int, Any] = {}
    counter = ray.remote(count_rows).options(num_cpus=1, max_retries=3)
    spec_dict = spec_to_dict(spec)
    for i, kind in enumerate(source.formats):
        if kind == "parquet":
            counts[i] = source.count(i, shard_rows)
        else:
            counts[i] = counter.remote(spec_dict, source.files[i], shard_rows)
    refs = {i: ref for i, ref in counts.items() if not isinstance(ref, tuple)}
    if refs:
        for i, value in zip(refs, ray.get(list(refs.values()))):
            counts[i] = value
    ordered = [counts[i] for i in range(len(source.files))]
    return [int(n) for n, _ in ordered], [list(marks) for _, marks in ordered]


def plan(
    counts: list[int],
    shard_rows: int,
    marks: list[list[Mark | None]] | None = None,
    sizes: list[int] | None = None,
) -> list[Shard]:
    """The shards of files with these row counts, ``shard_rows`` rows each (fewer at the end of a file), with the
    marks of :func:`row_counts` and each shard's share of its file's ``sizes`` in bytes."""
    shards: list[Shard] = []
    first_row = 0
    for file, n in enumerate(counts):
        for k, start in enumerate(range(0, n, shard_rows)):
            stop = min(n, start + shard_rows)
            mark = marks[file][k] if marks is not None else None
            offset, line = mark if mark is not None else (-1, 0)
            size = sizes[file] * (stop - start) // n if sizes is not None else 0
            shards.append(Shard(len(shards), file, start, stop, first_row + start, offset, line, size))
        first_row += n
    return shards


def file_sizes(source: Source) -> list[int]:
    return [file_size(f) for f in source.files]


__all__ = ["Shard", "count_rows", "file_sizes", "file_spec", "input_identity", "plan", "row_counts", "spec_to_dict"]
