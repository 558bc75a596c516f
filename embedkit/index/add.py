"""``embedkit index add``: grow an index under its lock and switch the new generation in."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .. import artefact
from ..errors import IncompatibleError, InputError
from ..store import Features, open_features
from .faiss_ops import _prepare
from .files import ARTEFACT_KIND, INDEX_FORMAT, META_FILE, _named, _now, _write_data
from .rows import BATCH_ROWS, _check_ids, _progress, _Skipped, _skipped_lines, _usable_batches
from .search import Index


@dataclass
class AddReport:
    """What ``index add`` did."""

    directory: Path
    added: int
    rows: int
    skipped_null_rows: int = 0
    skipped_nonfinite_rows: int = 0
    skipped_nonfinite_ids: list[Any] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        head = f"added {self.added:,} rows to {self.directory}; it now holds {self.rows:,}"
        return [head, *_skipped_lines(self.skipped_null_rows, self.skipped_nonfinite_rows, self.skipped_nonfinite_ids)]


def add_to_index(
    directory: str | Path,
    features: str | Path,
    *,
    column: str | None = None,
    batch_rows: int = BATCH_ROWS,
    progress: bool = False,
    wait: bool = False,
    device: str = "auto",
) -> tuple[Index, AddReport]:
    """Add the rows of a features file to the index in ``directory`` (``embedkit index add``).

    The directory's lock is held throughout: the index is read from disk under it (so an add that waited for
    another builds on that one's result and no batch is lost), grown in memory, written aside as a complete new
    generation and switched in. A failure or a kill leaves the previous index as it was. Returns the grown index
    and a report.

    Raises:
        BusyError: another process is writing the index (unless ``wait``).
        InputError: not an index, or a bad features file; IncompatibleError: embedded with other settings.
    """
    directory = _named(directory)
    # Not an index (missing, another kind of directory, corrupt manifest): say so before taking a lock or writing.
    artefact.read_manifest(directory, manifest_name=META_FILE, what="index")
    feats = open_features(features)
    with artefact.writing_dir(
        directory, kind=ARTEFACT_KIND, manifest_name=META_FILE, overwrite=True, wait=wait
    ) as stage:
        index = Index.load(directory, device=device)
        report = grow(index, feats, column, batch_rows, progress)
        write_generation(index, stage, feats, report)
    return index, report


def grow(index: Index, feats: Features, column: str | None, batch_rows: int, progress: bool) -> AddReport:
    """Add the usable rows of ``feats`` to this in-memory index (nothing is written)."""
    column = feats.embedding_column(column or index.meta["column"])
    index._check_compatible(feats, column)
    feats.require_columns(index.stored_columns)
    before = index.size
    tables, nonfinite = [], _Skipped()
    try:
        with _progress(feats.num_rows, progress, "adding") as bar:
            for matrix, table in _usable_batches(feats, column, index.stored_columns, batch_rows, nonfinite):
                tables.append(table.cast(index.ids.schema) if table.schema != index.ids.schema else table)
                bar.update(len(matrix))
        if not tables:
            why = f"{nonfinite.rows} hold NaN, infinite or overflowing values" if nonfinite.rows else "all are null"
            raise InputError(
                f"{feats.path}: no row has a usable embedding in {column!r} ({feats.num_rows} rows: "
                f"{why}); nothing to add"
            )
        new_ids = pa.concat_tables(tables)
        clash = pc.is_in(new_ids.column("id"), value_set=index.ids.column("id").combine_chunks())
        if pc.any(clash).as_py():
            repeated = new_ids.column("id").filter(clash).slice(0, 5).to_pylist()
            raise InputError(
                f"{feats.path}: ids already in the index: {', '.join(map(str, repeated))}...; ids must stay unique"
            )
        ids = pa.concat_tables([index.ids, new_ids])
        _check_ids(ids, feats.path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise IncompatibleError(
            f"{feats.path}: its id/stored columns do not match the index's ({index.ids.schema}): {exc}"
        ) from exc
    for matrix, _ in _usable_batches(feats, column, (), batch_rows):
        index.faiss_index.add(_prepare(matrix, index.metric))
    index.ids = ids
    index._positions = None
    added = index.size - before
    return AddReport(
        index.directory,
        added,
        index.size,
        feats.num_rows - added - nonfinite.rows,
        nonfinite.rows,
        nonfinite.examples,
    )


def write_generation(index: Index, stage: artefact.Staging, feats: Features, report: AddReport) -> None:
    """Write this (grown) index as the next generation into ``stage`` and seal it."""
    meta = json.loads(json.dumps(index.meta))  # a deep copy: index.meta is replaced only by the sealed one
    meta.pop("files", None)  # seal lists the new files (a format-1 index's role-keyed entries go too)
    meta.update(format=INDEX_FORMAT, rows=index.size, generation=int(meta.get("generation", 0)) + 1)
    meta.setdefault("build", {}).setdefault("adds", []).append(
        {
            "path": str(feats.path.resolve()),
            "rows": report.added,
            "skipped_null_rows": report.skipped_null_rows,
            "skipped_nonfinite_rows": report.skipped_nonfinite_rows,
            "at": _now(),
        }
    )
    _write_data(stage, index.faiss_index, index.ids)
    index.meta = stage.seal(meta)
