"""``embedkit index delete`` and ``embedkit index compact``: remove rows by id, under the lock, switched in whole."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import artefact
from ..errors import InputError
from .add import write_generation
from .compact import COMPACT_FRACTION, change_lines, compact, maybe_compact, remeasure
from .files import ARTEFACT_KIND, META_FILE, _named
from .search import Index

SHOWN_UNKNOWN = 5


@dataclass
class DeleteReport:
    """What ``index delete`` / ``index compact`` did."""

    directory: Path
    deleted: int
    rows: int
    unknown: int = 0
    unknown_ids: list[Any] = field(default_factory=list)  # the first few
    compacted: int = 0
    pending: int = 0  # deleted rows still held by FAISS (skipped by every search) until a compaction
    recall: dict[str, Any] | None = None
    action: str = "delete"

    def summary_lines(self) -> list[str]:
        if self.action == "compact":
            out = [f"{self.directory}: {self.rows:,} rows" + ("" if self.compacted else "; nothing to compact")]
        else:
            out = [f"deleted {self.deleted:,} rows from {self.directory}; it now holds {self.rows:,}"]
        if self.unknown:
            shown = ", ".join(map(str, self.unknown_ids)) + (", ..." if self.unknown > len(self.unknown_ids) else "")
            out.append(f"{self.unknown:,} id(s) not in the index, ignored: {shown} (--strict makes this an error)")
        out += change_lines(self.compacted, self.recall, automatic=self.action != "compact")
        if self.pending:
            out.append(
                f"{self.pending:,} deleted rows are skipped by search until compaction "
                f"(automatic past {COMPACT_FRACTION:.0%} of the index, or `embedkit index compact`)"
            )
        return out


def delete_from_index(
    directory: str | Path,
    ids: Sequence[Any],
    *,
    strict: bool = False,
    wait: bool = False,
    device: str = "auto",
) -> DeleteReport:
    """Delete the rows with these ids (``embedkit index delete``); unknown ids are reported, or refused if ``strict``.

    The rows are marked deleted (every search skips them through a FAISS IDSelector) and dropped for good once
    they pass ``COMPACT_FRACTION`` of the index. Under the directory's lock, written aside and switched in whole.

    Raises:
        InputError: not an index, no id given, or (``strict``) an id not in the index.
        BusyError: another process is writing the index (unless ``wait``).
    """
    directory = _named(directory)
    artefact.read_manifest(directory, manifest_name=META_FILE, what="index")
    if not len(ids):
        raise InputError("no id to delete given")
    # A first look without the lock: when no id is in the index nothing is written (no new generation).
    current = Index.load(directory, device=device)
    positions, unknown = _positions(current, ids)
    _check_unknown(unknown, strict)
    if not len(positions):
        return DeleteReport(
            directory, 0, current.size, len(unknown), unknown[:SHOWN_UNKNOWN], pending=len(current.deleted)
        )
    with artefact.writing_dir(
        directory, kind=ARTEFACT_KIND, manifest_name=META_FILE, overwrite=True, wait=wait
    ) as stage:
        index = Index.load(directory, device=device)  # again under the lock: another writer may have changed it
        positions, unknown = _positions(index, ids)
        _check_unknown(unknown, strict)
        index.deleted = np.union1d(index.deleted, positions)
        index._positions = None
        compacted = maybe_compact(index)
        recall = remeasure(index)
        record = {"action": "delete", "rows": len(positions), "unknown": len(unknown), "compacted": compacted}
        write_generation(index, stage, "changes", record, recall)
    return DeleteReport(
        directory,
        len(positions),
        index.size,
        len(unknown),
        unknown[:SHOWN_UNKNOWN],
        compacted,
        len(index.deleted),
        recall,
    )


def compact_index(directory: str | Path, *, wait: bool = False, device: str = "auto") -> DeleteReport:
    """Drop every deleted row for good now (``embedkit index compact``); nothing is written when there are none."""
    directory = _named(directory)
    artefact.read_manifest(directory, manifest_name=META_FILE, what="index")
    current = Index.load(directory, device=device)
    if not len(current.deleted):
        return DeleteReport(directory, 0, current.size, action="compact")
    with artefact.writing_dir(
        directory, kind=ARTEFACT_KIND, manifest_name=META_FILE, overwrite=True, wait=wait
    ) as stage:
        index = Index.load(directory, device=device)
        compacted = compact(index)
        recall = remeasure(index)
        write_generation(index, stage, "changes", {"action": "compact", "compacted": compacted}, recall)
    return DeleteReport(directory, 0, index.size, compacted=compacted, recall=recall, action="compact")


def read_ids(values: Sequence[str]) -> list[str]:
    """Ids to delete from the command line: each value is an id, or a file of them (one per line; a Parquet
    file's ``id`` column). Ids read as text are matched against a numeric id column by number."""
    import pyarrow.parquet as pq

    out: list[Any] = []
    for value in values:
        path = Path(value)
        if not path.is_file():
            out.append(value)
        elif path.suffix == ".parquet":
            try:
                out += pq.read_table(path, columns=["id"]).column("id").to_pylist()
            except (OSError, KeyError, ValueError) as exc:  # pyarrow's errors derive from these
                raise InputError(f"{path}: cannot read an 'id' column from it: {exc}") from exc
        else:
            try:
                out += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            except (OSError, UnicodeDecodeError) as exc:
                raise InputError(f"{path}: cannot read ids from it (one per line): {exc}") from exc
    return out


def _positions(index: Index, ids: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
    found, unknown = set(), []
    for value in dict.fromkeys(ids):  # each id once, in the order given
        try:
            found.add(index.position_of(value))
        except InputError:
            unknown.append(value)
    return np.array(sorted(found), dtype=np.int64), unknown


def _check_unknown(unknown: list[Any], strict: bool) -> None:
    if unknown and strict:
        shown = ", ".join(map(str, unknown[:SHOWN_UNKNOWN])) + (", ..." if len(unknown) > SHOWN_UNKNOWN else "")
        raise InputError(f"{len(unknown)} id(s) not in the index: {shown} (without --strict they are reported only)")
