"""Searching every query of a file (raw text or features) and gathering the hits as one table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ..errors import InputError, OutputError
from .rows import _progress
from .settings import open_queries

if TYPE_CHECKING:
    from .search import Index


def check_output(index: Index, output: Path, queries: str | Path) -> None:
    # A hits file in the index directory would be deleted by the next add (and its lock file would sit in
    # the artefact); writing over the queries file would destroy the input.
    if index.directory.resolve() in output.resolve().parents:
        raise OutputError(f"{output} is inside the index directory {index.directory}; write the hits elsewhere")
    if output.resolve() == Path(queries).resolve():
        raise OutputError(f"{output} is the queries file itself; write the hits to another file")


def search_all(
    index: Index,
    queries: str | Path,
    k: int,
    text_column: str | None,
    id_column: str | None,
    batch_rows: int,
    progress: bool,
    knobs,
) -> tuple[pa.Table, dict[str, int], set[str]]:
    from ..store import is_features_file

    tables, counts, notes = [], {"queries": 0, "searched": 0, "skipped": 0}, set()
    if is_features_file(queries):
        result, table = index.search_features(queries, k, **knobs)
        counts["queries"] = counts["searched"] = len(result)
        tables.append(result.to_table({"query_id": table.column("id")}))
        notes.update(result.notes)
    else:
        source = open_queries(index.meta, queries, text_column, id_column)
        with _progress(source.total_rows() or 0, progress, "searching") as bar:
            for records in source.batches(batch_rows):
                table, searched, res_notes = _search_records(index, records, k, source.id_column is not None, knobs)
                counts["queries"] += len(records)
                counts["searched"] += searched
                notes.update(res_notes)
                if table is not None:
                    tables.append(table)
                bar.update(len(records))
        counts["skipped"] = counts["queries"] - counts["searched"]
    if not tables:
        raise InputError(f"{queries}: no query could be searched ({counts['skipped']} empty or unreadable rows)")
    return pa.concat_tables(tables, promote_options="permissive"), counts, notes


def _search_records(index: Index, records, k: int, with_ids: bool, knobs) -> tuple[pa.Table | None, int, list[str]]:
    texts = [t if isinstance(t, str) and t.strip() else None for t in records.texts]
    texts = [t if e is None else None for t, e in zip(texts, records.parse_errors or [None] * len(texts))]
    good = [i for i, t in enumerate(texts) if t is not None]
    if not good:
        return None, 0, []
    encoded = index.extractor.encode([texts[i] for i in good])
    good = [i for i, ok in zip(good, encoded.valid) if ok]
    if not good:
        return None, 0, []
    vectors = next(iter(encoded.vectors.values()))[encoded.valid]
    result = index.search_vectors(vectors, k, **knobs)
    columns: dict[str, Any] = {"query": [records.row_numbers[i] for i in good]}
    if with_ids:
        ids = records.ids.to_pylist() if isinstance(records.ids, pa.Array) else records.ids
        columns["query_id"] = [ids[i] for i in good]
    columns["query_text"] = [texts[i] for i in good]
    return result.to_table(columns), len(good), result.notes
