"""``embedkit index add``: grow an index under its lock and switch the new generation in."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import artefact
from ..errors import IncompatibleError, InputError
from ..store import Features, open_features
from .compact import change_lines, maybe_compact, remeasure
from .faiss_ops import _prepare
from .files import ARTEFACT_KIND, DELETED_FORMAT, INDEX_FORMAT, META_FILE, _named, _now, _write_data
from .rescore import RESCORE_FILE, add_rows
from .rescore import write_generation as write_float_vectors
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
    replaced: int = 0  # upsert: rows whose id was in the index, now holding the new vector and columns
    compacted: int = 0  # deleted rows dropped for good by a compaction this change triggered
    recall: dict[str, Any] | None = None  # re-measured after the change (see compact.remeasure)

    def summary_lines(self) -> list[str]:
        new = self.added - self.replaced
        if self.replaced:
            head = f"replaced {self.replaced:,} rows and added {new:,} new ones in {self.directory}"
        else:
            head = f"added {self.added:,} rows to {self.directory}"
        out = [f"{head}; it now holds {self.rows:,}"]
        out += _skipped_lines(self.skipped_null_rows, self.skipped_nonfinite_rows, self.skipped_nonfinite_ids)
        return out + change_lines(self.compacted, self.recall)


def add_to_index(
    directory: str | Path,
    features: str | Path,
    *,
    column: str | None = None,
    upsert: bool = False,
    batch_rows: int = BATCH_ROWS,
    progress: bool = False,
    wait: bool = False,
    device: str = "auto",
    rescore_with: str | Path | None = None,
) -> tuple[Index, AddReport]:
    """Add the rows of a features file to the index in ``directory`` (``embedkit index add`` / ``upsert``).

    The directory's lock is held throughout: the index is read from disk under it (so an add that waited for
    another builds on that one's result and no batch is lost), grown in memory, written aside as a complete new
    generation and switched in. A failure or a kill leaves the previous index as it was. Returns the grown index
    and a report. Ids stay unique: a row whose id is already in the index is refused, unless ``upsert``, where it
    replaces the old row (the old vector is deleted, see :mod:`embedkit.index.live`; enough deletions compact).
    An index that re-scores with float vectors needs the float features of the added rows (``rescore_with``).

    Raises:
        BusyError: another process is writing the index (unless ``wait``).
        InputError: not an index, an id already there (without ``upsert``), or a bad features file;
        IncompatibleError: embedded with other settings.
    """
    directory = _named(directory)
    # Not an index (missing, another kind of directory, corrupt manifest): say so before taking a lock or writing.
    artefact.read_manifest(directory, manifest_name=META_FILE, what="index")
    feats = open_features(features)
    with artefact.writing_dir(
        directory, kind=ARTEFACT_KIND, manifest_name=META_FILE, overwrite=True, wait=wait
    ) as stage:
        index = Index.load(directory, device=device)
        report = grow(index, feats, column, batch_rows, progress, upsert=upsert, rescore_with=rescore_with)
        report.compacted = maybe_compact(index)
        report.recall = remeasure(index)
        report.rows = index.size
        record = {
            "action": "upsert" if upsert else "add",
            "path": str(feats.path.resolve()),
            "rows": report.added,
            "replaced": report.replaced,
            "skipped_null_rows": report.skipped_null_rows,
            "skipped_nonfinite_rows": report.skipped_nonfinite_rows,
            "compacted": report.compacted,
        }
        write_generation(index, stage, "adds", record, report.recall)
    return index, report


def grow(
    index: Index,
    feats: Features,
    column: str | None,
    batch_rows: int,
    progress: bool,
    upsert: bool = False,
    rescore_with: str | Path | None = None,
) -> AddReport:
    """Add the usable rows of ``feats`` to this in-memory index (nothing is written)."""
    column = feats.embedding_column(column or index.meta["column"])
    index._check_compatible(feats, column)
    feats.require_columns(index.stored_columns)
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
        _check_ids(new_ids, feats.path)
        live = index.live()
        live_ids = index.ids if live is None else index.ids.filter(pa.array(live))
        clash = pc.is_in(new_ids.column("id"), value_set=live_ids.column("id").combine_chunks())
        replaced = [] if not pc.any(clash).as_py() else new_ids.column("id").filter(clash).to_pylist()
        if replaced and not upsert:
            shown = ", ".join(map(str, replaced[:5])) + (", ..." if len(replaced) > 5 else "")
            raise InputError(
                f"{feats.path}: {len(replaced)} id(s) already in the index ({shown}); ids must stay unique: "
                "replace those rows with `embedkit index upsert` (upsert=True in Python) or delete them first"
            )
        ids = pa.concat_tables([index.ids, new_ids])
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise IncompatibleError(
            f"{feats.path}: its id/stored columns do not match the index's ({index.ids.schema}): {exc}"
        ) from exc
    old = [index.position_of(value) for value in replaced]
    if index.float_vectors is not None or rescore_with is not None:
        add_rows(index, new_ids, feats, column, rescore_with, batch_rows)
    for matrix, _ in _usable_batches(feats, column, (), batch_rows):
        index.faiss_index.add(_prepare(matrix, index.metric))
    index.ids = ids
    index.deleted = np.union1d(index.deleted, np.asarray(old, dtype=np.int64))
    index._positions = None
    added = new_ids.num_rows
    return AddReport(
        index.directory,
        added,
        index.size,
        feats.num_rows - added - nonfinite.rows,
        nonfinite.rows,
        nonfinite.examples,
        replaced=len(replaced),
    )


def write_generation(
    index: Index, stage: artefact.Staging, log_key: str, record: dict[str, Any], recall: dict[str, Any] | None
) -> None:
    """Write this (changed) index as the next generation into ``stage`` and seal it; ``record`` is logged."""
    meta = json.loads(json.dumps(index.meta))  # a deep copy: index.meta is replaced only by the sealed one
    meta.pop("files", None)  # seal lists the new files (a format-1 index's role-keyed entries go too)
    meta.update(
        format=DELETED_FORMAT if len(index.deleted) else INDEX_FORMAT,
        rows=int(index.faiss_index.ntotal),
        deleted=len(index.deleted),
        generation=int(meta.get("generation", 0)) + 1,
    )
    build = meta.setdefault("build", {})
    build.setdefault(log_key, []).append({**record, "at": _now()})
    if recall is not None:
        build["recall_now"] = recall
    index_bytes = _write_data(stage, index.faiss_index, index.ids, index.deleted)
    if isinstance(meta.get("codes"), dict):
        meta["codes"]["bytes_per_vector"] = round(index_bytes / max(1, int(index.faiss_index.ntotal)), 1)
    if index.float_vectors is not None:
        write_float_vectors(index, stage.path(RESCORE_FILE))
        meta["rescore"] = index.meta["rescore"]
    index.meta = stage.seal(meta)
