"""Training data: one embedding column and the labels read from a features file, and the checks that refuse labels the
chosen evaluation cannot split."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError, InputError
from ..store import Features, open_features

log = logging.getLogger(__name__)


# More distinct labels than half the rows means the column named is free text or an id, not classes; below this
# many rows a tiny hand-made set could legitimately look like that.
LABELS_LIKE_TEXT_MIN_ROWS = 20


@dataclass
class TrainingData:
    """Vectors and labels ready to fit, with what was skipped on the way."""

    X: np.ndarray
    y: np.ndarray
    ids: pa.Array
    features: Features
    column: str
    skipped_null_embeddings: int = 0
    skipped_null_labels: int = 0
    skipped_non_finite: int = 0
    groups: np.ndarray | None = None  # one group label per row of X (``--group-column``), for per-group metrics

    @property
    def class_counts(self) -> dict[Any, int]:
        counts = Counter(self.y.tolist())
        return {label: counts[label] for label in sorted(counts)}


def _labels_array(values: pa.ChunkedArray, column: str) -> np.ndarray:
    """Labels as a numpy array of one kind: integers stay integers, anything else becomes text."""
    typ = values.type
    if pa.types.is_integer(typ) or pa.types.is_boolean(typ):
        return np.asarray(values.to_pylist(), dtype=np.int64 if pa.types.is_integer(typ) else bool)
    if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_dictionary(typ):
        return np.asarray([str(v) for v in values.to_pylist()], dtype=str)
    if pa.types.is_floating(typ):
        floats = values.to_numpy(zero_copy_only=False)
        if np.all(floats == np.round(floats)):  # 0.0/1.0 labels written by pandas with NaNs elsewhere
            return floats.astype(np.int64)
        raise InputError(f"label column {column!r} holds non-integer numbers ({typ}); a classifier needs categories")
    log.warning("label column %r has type %s; using its text form as the class", column, typ)
    return np.asarray(
        [json.dumps(v, default=str) if not isinstance(v, str) else v for v in values.to_pylist()], dtype=str
    )


def _group_values(values: pa.ChunkedArray) -> np.ndarray:
    # Groups are categories shown by name; a missing value is a group of its own, never silently dropped.
    return np.array(["(missing)" if v is None else str(v) for v in values.to_pylist()], dtype=object)


def load_training_data(
    features: str | Path | Features, label_column: str, column: str | None = None, group_column: str | None = None
) -> TrainingData:
    """Read one embedding column and the labels, skipping rows with a null embedding or a null label.

    Rows whose vector holds NaN or infinity are skipped and counted too, as the cluster stage does: the embed stage
    never writes them, so they come from a damaged or hand-made file, and one such row must not stop a fit that
    every other row supports (scikit-learn refuses the whole matrix otherwise).
    """
    feats = features if isinstance(features, Features) else open_features(features)
    if column is None and len(feats.embedding_columns) > 1:  # the CLI and the API name the choice differently
        raise InputError(
            f"{feats.path} has several embedding columns; pick one with --column (column= in Python): "
            + ", ".join(feats.embedding_columns)
        )
    column = feats.embedding_column(column)
    if label_column not in feats.schema.names:
        raise InputError(
            f"{feats.path}: label column {label_column!r} not found; columns: {', '.join(feats.schema.names)}"
        )
    if label_column == column or label_column.startswith("embedding"):
        raise ConfigError(f"label column {label_column!r} is an embedding column; name the column holding the classes")
    if group_column is not None:
        feats.require_columns([group_column])
    X, table, null_embeddings = feats.load(column, extra=[label_column, *([group_column] if group_column else [])])
    labels = table.column(label_column)
    present = pc.is_valid(labels)
    if pa.types.is_floating(labels.type):
        present = pc.and_(present, pc.invert(pc.is_nan(labels)))
    if pa.types.is_string(labels.type) or pa.types.is_large_string(labels.type):
        present = pc.and_(present, pc.not_equal(pc.utf8_trim_whitespace(labels), ""))
    present_np = np.asarray(present.to_pylist(), dtype=bool)
    null_labels = int((~present_np).sum())
    finite = np.isfinite(X).all(axis=1) if X.size else np.ones(len(X), dtype=bool)
    non_finite = int((present_np & ~finite).sum())  # a row missing its label is counted once, as a missing label
    usable = present_np & finite
    kept = table.filter(pa.array(usable))
    data = TrainingData(
        X=X[usable],
        y=_labels_array(kept.column(label_column), label_column),
        ids=kept.column("id").combine_chunks(),
        features=feats,
        column=column,
        skipped_null_embeddings=null_embeddings,
        skipped_null_labels=null_labels,
        skipped_non_finite=non_finite,
        groups=_group_values(kept.column(group_column)) if group_column else None,
    )
    if null_embeddings:
        log.info("skipped %d row(s) with a null embedding (rows the embed stage could not embed)", null_embeddings)
    if null_labels:
        log.info("skipped %d row(s) with a missing label in %r", null_labels, label_column)
    if non_finite:
        log.warning("skipped %d row(s) whose vector in %r holds NaN or infinity", non_finite, column)
    if len(data.y) == 0:
        raise InputError(
            f"{feats.path}: no row has both a finite embedding and a label in {label_column!r} ({null_embeddings} "
            f"null embedding(s), {non_finite} with NaN/inf, {null_labels} missing label(s))"
        )
    return data


def _label(value: Any, width: int = 40) -> str:
    # A label column that is really free text (the wrong column named) would otherwise flood the message.
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _fmt_counts(counts: dict[Any, int], limit: int = 8) -> str:
    items = [f"{_label(label)}: {n}" for label, n in list(counts.items())[:limit]]
    return ", ".join(items) + (f", ... ({len(counts)} classes)" if len(counts) > limit else "")


def check_classes(counts: dict[Any, int], label_column: str, *, cv: int | None, test_size: float) -> None:
    """Refuse data the chosen evaluation cannot split, naming the class at fault and its row count."""
    if len(counts) < 2:
        only = next(iter(counts))
        raise InputError(
            f"label column {label_column!r} has a single class ({_label(only)}, {counts[only]} rows); "
            "a classifier needs at least two"
        )
    rows = sum(counts.values())
    if rows >= LABELS_LIKE_TEXT_MIN_ROWS and len(counts) > rows / 2:
        raise InputError(
            f"label column {label_column!r} has {len(counts)} distinct values for {rows} rows "
            f"({_fmt_counts(counts, limit=3)}): is it a text or id column rather than the classes?"
        )
    if cv:
        small = {c: n for c, n in counts.items() if n < cv}
        if small:
            label, n = min(small.items(), key=lambda kv: kv[1])
            raise InputError(
                f"class {_label(label)} has {n} row(s); stratified --cv {cv} needs at least {cv} per class "
                f"({len(small)} class(es) too small: {_fmt_counts(small)}); "
                "lower --cv, or drop or add rows to those classes"
            )
        return
    if test_size <= 0:
        return
    small = {c: n for c, n in counts.items() if n < 2}
    if small:
        label = next(iter(small))
        raise InputError(
            f"class {_label(label)} has 1 row; a stratified hold-out needs at least 2 per class "
            "(one to train on, one to test) "
            f"({len(small)} class(es) with 1 row: {_fmt_counts(small)}); drop them or use --test-size 0"
        )
    n = sum(counts.values())
    n_test = int(np.ceil(test_size * n))
    if n_test < len(counts) or n - n_test < len(counts):
        raise InputError(
            f"--test-size {test_size} of {n} rows leaves {n_test} test and "
            f"{n - n_test} training rows; both need at least "
            f"one row per class ({len(counts)} classes): "
            f"choose a test size between {len(counts) / n:.2f} and {1 - len(counts) / n:.2f}"
        )
