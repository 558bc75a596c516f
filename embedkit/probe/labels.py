"""The labelled input: one cheap pass that finds the usable rows, and a stratified sample of them."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError
from ..extract.texts import check_text
from ..sources import Source

SAMPLE_TEXT = "__embedkit_text"  # column name of the text in the sampled input (never reaches the output)
MISSING_LABEL = "missing label"
READ_ROWS = 8192


@dataclass
class LabelScan:
    """What one cheap pass over the input found: rows usable for probing, and why the others are not."""

    rows: int = 0
    usable: list[int] = field(default_factory=list)  # row numbers with an embeddable text and a label
    labels: list[Any] = field(default_factory=list)  # the label of each usable row
    skipped: Counter = field(default_factory=Counter)  # reason -> rows

    @property
    def class_counts(self) -> dict[Any, int]:
        counts = Counter(self.labels)
        return {label: counts[label] for label in sorted(counts, key=str)}


def _label_missing(value: Any) -> bool:
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or (isinstance(value, str) and not value.strip())
    )


def _label_key(value: Any) -> Any:
    # Unhashable JSON values (lists, objects) are counted by their JSON text, as the classify stage does.
    return value if isinstance(value, (str, int, float, bool)) else json.dumps(value, default=str)


def _as_list(values) -> list:
    return values.to_pylist() if isinstance(values, (pa.Array, pa.ChunkedArray)) else list(values)


def scan_labels(source: Source, label_column: str) -> LabelScan:
    """Count rows, labels and unusable rows (unparseable, no embeddable text, no label) without embedding."""
    scan = LabelScan()
    for records in source.batches(READ_ROWS):
        labels = _as_list(records.keep[label_column])
        for row, text, label, error in zip(records.row_numbers, records.texts, labels, records.parse_errors):
            scan.rows += 1
            reason = "malformed" if error is not None else None
            if reason is None:
                checked = check_text(text)
                reason = checked.status if checked.text is None else None
            if reason is None and _label_missing(label):
                reason = MISSING_LABEL
            if reason is not None:
                scan.skipped[reason] += 1
                continue
            scan.usable.append(row)
            scan.labels.append(_label_key(label))
    if scan.rows == 0:
        raise InputError(f"{source.spec} holds no data rows")
    if not scan.usable:
        raise InputError(
            f"{source.spec}: no row has both a text in {source.text_column!r} and a label in {label_column!r} "
            f"({format_skipped(scan.skipped)})"
        )
    return scan


def stratified_sample(labels: Sequence[Any], size: int, seed: int, min_per_class: int = 1) -> np.ndarray:
    """Sorted positions of a seeded stratified sample of about ``size`` of ``labels``.

    Each class gets its proportional share (largest remainder), but never fewer than ``min_per_class`` rows
    (or all it has), so a rare class keeps enough rows for every fold of the cross-validation.
    """
    n = len(labels)
    if size >= n:
        return np.arange(n)
    groups: dict[Any, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    quota = {c: size * len(rows) / n for c, rows in groups.items()}
    take = {c: min(len(groups[c]), max(int(quota[c]), min_per_class)) for c in groups}
    left = size - sum(take.values())
    for c in sorted(groups, key=lambda c: quota[c] - int(quota[c]), reverse=True):
        if left <= 0:
            break
        if take[c] < len(groups[c]):
            take[c] += 1
            left -= 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.asarray(rows), take[c], replace=False) for c, rows in groups.items()]
    return np.sort(np.concatenate(chosen))


def write_sample(source: Source, label_column: str, rows: set[int], path: Path) -> None:
    """The chosen rows (id, text, label) as a Parquet input for ``embed_file``; texts as ``check_text`` leaves them."""
    from ..embed import _to_arrow

    ids, texts, labels = [], [], []
    for records in source.batches(READ_ROWS):
        record_ids = _as_list(records.ids) if records.ids is not None else records.row_numbers
        for row, rid, text, label in zip(
            records.row_numbers, record_ids, records.texts, _as_list(records.keep[label_column])
        ):
            if row in rows:
                ids.append(rid)
                texts.append(check_text(text).text)  # invalid UTF-8 repaired here: Parquet text must be valid
                labels.append(label)
    table = pa.table(
        {
            "id": _to_arrow(ids, "id"),
            SAMPLE_TEXT: pa.array(texts, type=pa.string()),
            label_column: _to_arrow(labels, label_column),
        }
    )
    pq.write_table(table, path)


def format_skipped(skipped: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()) if n) or "none"
