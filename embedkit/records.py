"""A batch of input rows (``Records``) and how the readers' chunks become batches of an exact size.

A reader (``embedkit.sources``) yields chunks: dicts of column values (Python lists, or Arrow arrays for Parquet)
of one file. ``Batcher`` re-cuts them into ``Records`` of exactly ``rows`` rows, across files, numbering each
row by its place in the whole input. ``source`` arguments are a ``Source`` (its ``id_column`` and ``keep``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa


@dataclass
class Records:
    """One batch of input rows, column-wise. ``keep`` values are lists or Arrow arrays (types kept)."""

    row_numbers: list[int]
    texts: list[object]
    ids: list[object] | pa.Array | None
    keep: dict[str, list[object] | pa.Array] = field(default_factory=dict)
    parse_errors: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)


def empty_chunk(source) -> dict:
    return {"text": [], "id": [] if source.id_column else None, "keep": {c: [] for c in source.keep}, "parse_error": []}


def append_row(chunk: dict, row: dict) -> None:
    chunk["text"].append(row["text"])
    if chunk["id"] is not None:
        chunk["id"].append(row["id"])
    for c, v in row["keep"].items():
        chunk["keep"][c].append(v)
    chunk["parse_error"].append(row["parse_error"])


def _take(values, start: int, stop: int):
    return values.slice(start, stop - start) if isinstance(values, pa.Array) else values[start:stop]


def _concat(parts: list):
    if all(isinstance(p, pa.Array) for p in parts):
        return pa.concat_arrays([p.cast(parts[0].type) for p in parts])
    # A batch across a Parquet file and a line-format one: Python values throughout (iterating an Arrow array would
    # give Arrow scalars, which the text column would store as their JSON text, quotes included).
    return [v for p in parts for v in (p.to_pylist() if isinstance(p, pa.Array) else p)]


class Batcher:
    """Re-cuts reader chunks (per file, any size) into batches of exactly ``rows`` rows across files."""

    def __init__(self, rows: int, source) -> None:
        self.rows, self.source = rows, source
        self.parts: list[tuple[dict, int, int, int]] = []  # (chunk, first row number, start, stop)
        self.size = 0

    def add(self, chunk: dict, first_row: int, start: int) -> Iterator[Records]:
        n = len(chunk["text"])
        while start < n:
            stop = min(n, start + self.rows - self.size)
            self.parts.append((chunk, first_row, start, stop))
            self.size += stop - start
            start = stop
            if self.size == self.rows:
                yield self._emit()

    def flush(self) -> Iterator[Records]:
        if self.size:
            yield self._emit()

    def _emit(self) -> Records:
        parts, self.parts, self.size = self.parts, [], 0

        def gather(get):
            return _concat([_take(get(c), a, b) for c, _, a, b in parts])

        return Records(
            row_numbers=[first + i for _, first, a, b in parts for i in range(a, b)],
            texts=gather(lambda c: c["text"]),
            ids=gather(lambda c: c["id"]) if self.source.id_column else None,
            keep={k: gather(lambda c, k=k: c["keep"][k]) for k in self.source.keep},
            parse_errors=gather(lambda c: c["parse_error"]),
        )


__all__ = ["Batcher", "Records", "append_row", "empty_chunk"]
