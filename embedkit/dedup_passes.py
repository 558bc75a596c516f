"""The two streaming passes of ``embedkit dedup`` over a features file (:mod:`embedkit.dedup` has the relation).

Pass 1 reads the vector, id and text columns a batch at a time (``BATCH_ROWS`` rows, never across a row group)
and keeps the unit vectors of the rows with a usable one, a 16-byte digest and the length of each text, and the
ids. The groups are found on those; pass 2 reads every column again a batch at a time and writes each batch with
its dedup columns, picking up the texts of the few example rows as they stream past.

Memory bound: the vectors, ``rows x dim x 4`` bytes, held as the unit matrix plus FAISS's copy during the search
(and a copy of the distinct ones when some rows repeat); then O(rows) small arrays (digests, lengths, ids,
labels, the output columns: tens of bytes a row). Texts and the other columns only one batch at a time, so a
file of long texts costs what its vectors cost (tests/test_dedup.py measures it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .dedup import (
    DEDUP_KEY,
    EXAMPLES,
    OUTPUT_COLUMNS,
    DedupResult,
    digest_edges,
    normalise_text,
    text_digests,
    unit_rows,
)
from .errors import InputError
from .store import JOB_KEY, Features, with_metadata
from .vectors import decode

BATCH_ROWS = 65536  # rows read at a time by both passes (never more than one row group)


@dataclass
class _Scan:
    """What the first pass keeps of a features file: O(rows) facts and the vectors, never the texts."""

    unit: np.ndarray  # unit vectors of the rows with a usable vector
    rows: np.ndarray  # their row numbers
    copies: np.ndarray  # exact text copies: (first row, later row)
    lengths: np.ndarray  # text length of every row (0 without text)
    ids: pa.Array  # id of every row (row number when the file has no id column)


def _batches(feats: Features, names: list[str]) -> Iterator[pa.RecordBatch]:
    """``names`` of every row, ``BATCH_ROWS`` at a time, from a features file or a sharded dataset."""
    for table in feats.iter_tables(names, BATCH_ROWS):
        yield from table.combine_chunks().to_batches()


def scan_file(feats: Features, column: str, text_column: str | None) -> _Scan:
    """First pass, a batch (within one row group) at a time: unit vectors, text digests and lengths, ids."""
    dim = feats.schema.field(column).type.list_size
    encoding = feats.vector_encoding(column)
    names = [column] + [c for c in dict.fromkeys(["id", text_column]) if c and c in feats.schema.names]
    unit = np.empty((feats.num_rows, dim), dtype=np.float32)  # untouched pages cost no memory
    rows, ids, digests, lengths = [], [], [], []
    count = seen = 0
    try:
        for batch in _batches(feats, names):
            vectors = batch.column(column)
            valid = vectors.is_valid().to_numpy(zero_copy_only=False)
            if valid.any():
                part, usable = unit_rows(decode(vectors.filter(pa.array(valid)), encoding))
                unit[count : count + int(usable.sum())] = part[usable]
                rows.append(np.flatnonzero(valid)[usable] + seen)
                count += int(usable.sum())
            if "id" in names:
                ids.append(batch.column("id"))
            if text_column is not None:
                texts = batch.column(text_column).to_pylist()
                digests.append(text_digests(texts))
                lengths.append(np.fromiter((len(t) if t else 0 for t in texts), dtype=np.int64, count=len(texts)))
            seen += batch.num_rows
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{feats.path}: corrupt or unreadable Parquet: {exc}") from exc
    if ids:
        all_ids = pa.concat_arrays(ids)
    elif "id" in names:  # no row at all
        all_ids = pa.array([], type=feats.schema.field("id").type)
    else:
        all_ids = pa.array(np.arange(seen), pa.int64())
    return _Scan(
        unit=unit[:count],
        rows=np.concatenate(rows).astype(np.int64) if rows else np.empty(0, np.int64),
        copies=digest_edges(np.concatenate(digests)) if digests else np.empty((0, 2), np.int64),
        lengths=np.concatenate(lengths) if lengths else np.zeros(seen, np.int64),
        ids=all_ids,
    )


def annotate(
    labels: np.ndarray, kept: np.ndarray, has_vector: np.ndarray, scan: _Scan, result: DedupResult
) -> tuple[dict[str, pa.Array], list[tuple[int, int, int]]]:
    """The ``OUTPUT_COLUMNS`` of every row; fills the counts of ``result``; returns the example rows to show
    as (group size, kept row, one of its duplicates)."""
    n = len(labels)
    rows = np.arange(n)
    sizes = np.bincount(labels, minlength=labels.max() + 1 if n else 0)[labels] if n else np.zeros(0, dtype=np.int64)
    grouped = sizes > 1
    # Groups numbered 0.. in the order of their kept row, so the numbers read in file order.
    group_of_kept = np.full(n, -1)
    kept_rows = np.unique(kept[grouped])
    group_of_kept[kept_rows] = np.arange(len(kept_rows))
    status = np.where(~has_vector, "no_embedding", "unique").astype(object)
    status[grouped & (kept == rows)] = "kept"
    status[grouped & (kept != rows)] = "duplicate"
    keep = kept == rows
    position = np.full(n, -1)
    position[scan.rows] = np.arange(len(scan.rows))
    paired = grouped & ~keep & has_vector & has_vector[kept]
    similarity = np.full(n, np.nan, dtype=np.float32)
    similarity[paired] = np.einsum("ij,ij->i", scan.unit[position[paired]], scan.unit[position[kept[paired]]])
    columns = {
        "dup_group": pa.array(group_of_kept[kept], mask=~grouped, type=pa.int64()),
        "dup_status": pa.array(status.tolist(), type=pa.string()),
        "keep": pa.array(keep),
        "dup_of": pc.take(scan.ids, pa.array(kept, mask=~(grouped & ~keep))),
        "dup_similarity": pa.array(similarity, mask=~paired),
    }
    result.groups = len(kept_rows)
    result.dropped = int((~keep).sum())
    result.no_embedding = int((~has_vector).sum())
    shown = [(int(sizes[k]), int(k), int(np.flatnonzero((kept == k) & (rows != k))[0])) for k in kept_rows[:EXAMPLES]]
    return columns, shown


def write_output(
    feats: Features,
    tmp: Path,
    columns: dict[str, pa.Array],
    record: bytes,
    text_column: str | None,
    shown: list[tuple[int, int, int]],
) -> dict[int, str | None]:
    """Second pass: every row of the input with its dedup columns, a batch at a time; returns the texts of the
    example rows (read as they stream past)."""
    inputs = [f for f in feats.schema if f.name not in OUTPUT_COLUMNS]  # a re-run replaces them
    # The features metadata as the file (or a dataset's manifest) holds it; a single file's other keys travel too.
    stored = with_metadata(feats.schema, feats.meta).metadata or {}
    meta = {k: v for k, v in stored.items() if k not in (JOB_KEY, DEDUP_KEY)}
    meta[DEDUP_KEY] = record
    schema = pa.schema(inputs + [pa.field(name, array.type) for name, array in columns.items()], metadata=meta)
    wanted = {row for _, kept, other in shown for row in (kept, other)}
    texts: dict[int, str | None] = {}
    seen = 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for batch in _batches(feats, [f.name for f in inputs]):
                table = pa.Table.from_batches([batch])
                for name, array in columns.items():
                    table = table.append_column(name, array.slice(seen, batch.num_rows))
                writer.write_table(table.replace_schema_metadata(meta))
                if text_column is not None:
                    for row in wanted.intersection(range(seen, seen + batch.num_rows)):
                        texts[row] = batch.column(text_column)[row - seen].as_py()
                seen += batch.num_rows
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{feats.path}: corrupt or unreadable Parquet: {exc}") from exc
    return texts


def examples(
    result: DedupResult,
    shown: list[tuple[int, int, int]],
    texts: dict[int, str | None],
    ids: pa.Array,
    similarity: pa.Array,
) -> None:
    for g, (size, kept, other) in enumerate(shown):
        cos = similarity[other].as_py()
        result.examples.append(
            {
                "group": g,
                "size": size,
                "kept": _show(texts.get(kept), ids[kept].as_py()),
                "duplicate": _show(texts.get(other), ids[other].as_py())
                + ("" if cos is None else f" (cosine {cos:.3f})"),
            }
        )


def _show(text: str | None, ident: Any, width: int = 60) -> str:
    if text:
        text = normalise_text(text)
        return repr(text if len(text) <= width else text[: width - 1] + "…")
    return f"id {ident!r}"
