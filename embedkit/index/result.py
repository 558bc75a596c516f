"""What a search returns (:class:`SearchResult`) and the small helpers that shape hits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import InputError
from ..light_imports import arrow_positions


@dataclass
class SearchResult:
    """Hits of a batch of queries: ``positions`` are FAISS rows (-1 where fewer than k were found)."""

    scores: np.ndarray
    positions: np.ndarray
    ids: pa.Table
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.scores)

    def hits(self, query: int = 0) -> list[dict[str, Any]]:
        """The hits of one query as dicts: rank, score, id and the stored columns."""
        keep = self.positions[query] >= 0
        rows = self.ids.take(arrow_positions(self.positions[query][keep])).to_pylist()
        return [
            {"rank": r + 1, "score": float(s), **row} for r, (s, row) in enumerate(zip(self.scores[query][keep], rows))
        ]

    def to_table(self, query_columns: dict[str, Sequence[Any]] | None = None) -> pa.Table:
        """Long format: one row per (query, hit) with ``query`` (its number), rank, score, id, stored columns."""
        q, rank = np.nonzero(self.positions >= 0)
        hits = self.ids.take(pa.array(self.positions[q, rank]))
        columns: dict[str, Any] = {"query": pa.array(q, pa.int64())}
        for name, values in (query_columns or {}).items():
            values = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
            columns[name] = values.take(pa.array(q))
        columns["rank"] = pa.array(rank + 1, pa.int32())
        columns["score"] = pa.array(self.scores[q, rank], pa.float32())
        for name in hits.column_names:
            columns[name] = hits.column(name)
        return pa.table(columns)


def _exclude(scores: np.ndarray, positions: np.ndarray, own: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    out_s = np.full((len(scores), k), np.nan, dtype=scores.dtype)
    out_p = np.full((len(scores), k), -1, dtype=np.int64)
    for q in range(len(scores)):
        keep = (positions[q] != own[q]) & (positions[q] >= 0)
        s, p = scores[q][keep][:k], positions[q][keep][:k]
        out_s[q, : len(s)], out_p[q, : len(p)] = s, p
    return out_s, out_p


def _coerce_id(value: Any, type_: pa.DataType) -> Any:
    if isinstance(value, str) and (pa.types.is_integer(type_) or pa.types.is_floating(type_)):
        try:
            return int(value) if pa.types.is_integer(type_) else float(value)
        except ValueError:
            raise InputError(f"id {value!r} is not a number; this index's ids are {type_}") from None
    return value
