"""Reading a features file for indexing: batches of usable rows (finite vectors), the build's sample pass, id checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError
from ..store import Features
from .faiss_ops import _prepare, _usable_rows
from .recall import EVAL_MAX_FRACTION

BATCH_ROWS = 65536


def _column_dim(features: Features, column: str) -> int:
    return int(features.schema.field(column).type.list_size)


def _skipped_lines(null_rows: int, nonfinite_rows: int, nonfinite_ids: list[Any]) -> list[str]:
    out = []
    if null_rows:
        out.append(f"{null_rows} rows without an embedding skipped")
    if nonfinite_rows:
        ids = ", ".join(map(str, nonfinite_ids)) + (", ..." if nonfinite_rows > len(nonfinite_ids) else "")
        out.append(
            f"{nonfinite_rows} rows whose embedding holds NaN, infinite or overflowing values skipped (no "
            f"search could return them; ids {ids}): re-embed those rows"
        )
    return out


@dataclass
class _Skipped:
    """Rows of a features file left out of the index because their vector is not usable (see _usable_rows)."""

    rows: int = 0
    examples: list[Any] = field(default_factory=list)


def _usable_batches(features: Features, column: str, extra, batch_rows: int, skipped: _Skipped | None = None):
    """``Features.iter_batches`` without the rows whose vector is not finite (counted into ``skipped``).

    Every pass over a file goes through here, so row positions agree between the sampling pass and the add pass.
    """
    for matrix, table in features.iter_batches(column, extra, batch_rows):
        finite = _usable_rows(matrix)
        if not finite.all():
            if skipped is not None:
                skipped.rows += int((~finite).sum())
                left = 5 - len(skipped.examples)
                if left > 0:
                    skipped.examples += table.column("id").filter(pa.array(~finite)).slice(0, left).to_pylist()
            matrix, table = matrix[finite], table.filter(pa.array(finite))
        if len(matrix):
            yield matrix, table


@dataclass
class _Samples:
    train: np.ndarray
    queries: np.ndarray
    query_positions: np.ndarray
    rows: int
    nonfinite: _Skipped


def _draw_samples(
    features: Features, column: str, train_rows: int, eval_queries: int, metric: str, seed: int, batch_rows: int
) -> _Samples:
    """First pass: count rows with an embedding, draw a training sample and disjoint held-out queries."""
    query_set, train_set = sample_positions(features.num_rows, train_rows, eval_queries, seed)
    nonfinite = _Skipped()
    picked = pick_rows(_usable_batches(features, column, (), batch_rows, nonfinite), 0, query_set, train_set)
    return gather_samples(features, column, metric, [picked], nonfinite)


def sample_positions(total: int, train_rows: int, eval_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (among the usable rows) of the held-out queries and of the training sample, sorted.

    Drawn from the row count alone, so whoever reads the rows (this process, or Ray workers each reading some
    shards) picks the same ones.
    """
    rng = np.random.default_rng(seed)
    n_queries = min(eval_queries, max(1, int(total * EVAL_MAX_FRACTION)), max(0, total - 1))
    picks = rng.permutation(total)
    query_set = np.sort(picks[:n_queries])
    if n_queries + train_rows <= total:  # held out: queries never seen in training
        train_set = np.sort(picks[n_queries : n_queries + train_rows])
    else:  # too few rows to keep them apart: train on a sample of all rows
        train_set = np.sort(rng.permutation(total)[:train_rows])
    return query_set, train_set


@dataclass
class _Picked:
    """The sampled rows among some usable rows: training rows, query rows and the queries' positions."""

    train: list[np.ndarray]
    queries: list[np.ndarray]
    query_positions: list[np.ndarray]
    rows: int  # usable rows passed


def pick_rows(batches, first: int, query_set: np.ndarray, train_set: np.ndarray) -> _Picked:
    """The rows of ``batches`` (usable rows, the first at position ``first``) at the sampled positions."""
    picked, seen = _Picked([], [], [], 0), first
    for matrix, _ in batches:
        positions = np.arange(seen, seen + len(matrix))
        in_q = np.isin(positions, query_set)
        picked.queries.append(matrix[in_q])
        picked.query_positions.append(positions[in_q])
        if len(train_set):
            picked.train.append(matrix[np.isin(positions, train_set)])
        seen += len(matrix)
    picked.rows = seen - first
    return picked


def gather_samples(features: Features, column: str, metric: str, parts: list[_Picked], nonfinite: _Skipped) -> _Samples:
    """The samples from the picks of every part of the features, in order."""
    seen = sum(p.rows for p in parts)
    if seen == 0:
        why = f"{nonfinite.rows} hold NaN, infinite or overflowing values" if nonfinite.rows else "all are null"
        total = features.num_rows
        raise InputError(f"{features.path}: no row has a usable embedding in {column!r} ({total} rows: {why})")
    dim = _column_dim(features, column)
    stack = lambda parts: _prepare(np.concatenate(parts) if parts else np.empty((0, dim), np.float32), metric)  # noqa: E731
    train = stack([t for p in parts for t in p.train])
    queries = stack([q for p in parts for q in p.queries])
    positions = [q for p in parts for q in p.query_positions]
    positions_array = np.concatenate(positions).astype(np.int64) if positions else np.empty(0, np.int64)
    return _Samples(train, queries, positions_array, seen, nonfinite)


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="rows", desc=desc, disable=not enabled, leave=False)


def _check_ids(ids: pa.Table, path: Path) -> None:
    column = ids.column("id")
    if pa.types.is_nested(column.type) or pa.types.is_dictionary(column.type):
        # Hits map back to rows by id, compared and printed as one value: a list or struct id is no key.
        raise InputError(f"{path}: the id column is of type {column.type}; ids must be strings or numbers")
    if column.null_count:
        raise InputError(f"{path}: {column.null_count} row(s) have a null id; every indexed row needs one")
    if pc.count_distinct(column).as_py() != len(column):
        counts = pc.value_counts(column.combine_chunks())
        repeated = [str(v["values"]) for v in counts.to_pylist() if v["counts"] > 1][:5]
        raise InputError(f"{path}: ids repeat ({', '.join(repeated)}...); ids must be unique to map search hits back")
