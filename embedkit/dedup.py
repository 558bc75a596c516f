"""Near-duplicate detection: which rows of a features file say the same thing, and which one of each group to keep.

Two rows are duplicates when their normalised texts are equal (found by hashing, before any vector is looked at)
or when the cosine similarity of their vectors is at least ``threshold``; groups are the connected components of
that relation (so A~B and B~C puts A, B and C in one group even if A and C are further apart). The relation is
exact, not sampled: rows with byte-identical vectors are searched once (their neighbours are the same), and the
rest go through a FAISS exact inner-product range search on L2-normalised vectors, block by block, so the groups
are the ones an all-pairs comparison finds (tests/test_dedup.py and benchmarks/dedup_check.py check that).

Texts are compared after collapsing runs of whitespace and stripping the ends (a re-wrapped paragraph is the same
text); case and punctuation count. Empty texts are never grouped by text: they are bad input rows, not copies.

Every input row is written back, with ``dup_group`` (null for a row without duplicates), ``dup_status``
(``unique``, ``kept``, ``duplicate`` or ``no_embedding``: a row with a null or non-finite vector, compared by
text only), ``keep`` (one row per group), ``dup_of`` (the id of the kept row) and ``dup_similarity`` (cosine to
it). The output keeps the input's embedkit metadata, so it is still a features file for every later stage.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .artefact import writing_file
from .errors import ConfigError, InputError, choice_error
from .store import JOB_KEY, matrix_from_arrow, open_features

DEFAULT_THRESHOLD = 0.95
KEEP_RULES = ("first", "longest")
STATUSES = ("unique", "kept", "duplicate", "no_embedding")
OUTPUT_COLUMNS = ("dup_group", "dup_status", "keep", "dup_of", "dup_similarity")
DEDUP_KEY = b"embedkit.dedup"
# Cosines are float32 sums: an exact copy may score 0.99999994. Pairs within this of the threshold count.
TOLERANCE = 1e-6
QUERY_BLOCK = 2048  # query rows per range search: bounds the memory of one block's results
SEARCHES = ("exact", "hnsw")
HNSW_NEIGHBOURS = 32  # neighbours per row looked at by the approximate search
EDGE_BUDGET = 20_000_000  # pairs held before they are folded into component edges (memory stays O(rows))
EXAMPLES = 3


@dataclass
class DedupResult:
    """What ``dedup_file`` found; ``dropped`` rows have ``keep`` False."""

    output: Path
    rows: int
    column: str
    threshold: float
    keep_rule: str
    groups: int = 0
    dropped: int = 0
    exact_copies: int = 0  # rows whose normalised text equals an earlier row's
    no_embedding: int = 0
    searched: int = 0  # distinct vectors that went through the search
    search: str = "exact"
    text_column: str | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def summary_lines(self) -> list[str]:
        lines = [
            f"{self.rows} rows -> {self.output}; {self.groups} duplicate groups, {self.dropped} rows marked keep=false "
            f"({self.exact_copies} exact text copies); cosine >= {self.threshold:g} on {self.column}, "
            f"keep {self.keep_rule}; {self.search} search of {self.searched} distinct vectors; {self.seconds:.1f}s"
        ]
        if self.text_column is None:
            lines.append("no text column: duplicates found by vectors only (pass --text-column to hash texts)")
        if self.no_embedding:
            lines.append(f"{self.no_embedding} rows without a usable vector: kept, compared by text only")
        for ex in self.examples:
            lines.append(f"  group {ex['group']} ({ex['size']} rows): kept {ex['kept']} ~ {ex['duplicate']}")
        return lines


# ---------------------------------------------------------------------------------------------- the relation


def normalise_text(text: str) -> str:
    """What two texts must share to be exact copies: the same words and punctuation, whatever the whitespace."""
    return " ".join(text.split())


def text_edges(texts: list[str | None]) -> np.ndarray:
    """Pairs (first row, later row) of rows whose normalised texts are equal, as a [m, 2] int64 array."""
    first: dict[bytes, int] = {}
    edges = []
    for i, text in enumerate(texts):
        if text is None:
            continue
        key = normalise_text(text)
        if not key:
            continue
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        j = first.setdefault(digest, i)
        if j != i:
            edges.append((j, i))
    return np.array(edges, dtype=np.int64).reshape(-1, 2)


def unit_rows(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised float32 rows and a mask of the usable ones (finite and not all zero)."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    usable = np.isfinite(matrix).all(axis=1)
    norms = np.linalg.norm(np.where(usable[:, None], matrix, 0.0), axis=1)
    usable &= norms > 0
    unit = np.zeros_like(matrix)
    unit[usable] = matrix[usable] / norms[usable, None]
    return unit, usable


def identical_vectors(unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose vectors are byte-identical to an earlier row's: (representative of every row, edges to it)."""
    first: dict[bytes, int] = {}
    representative = np.arange(len(unit))
    for i in range(len(unit)):
        representative[i] = first.setdefault(hashlib.blake2b(unit[i].tobytes(), digest_size=16).digest(), i)
    copies = np.flatnonzero(representative != np.arange(len(unit)))
    return representative, np.stack([representative[copies], copies], axis=1)


def near_edges(unit: np.ndarray, threshold: float, search: str = "exact") -> np.ndarray:
    """Pairs (i, j) of unit rows whose inner product is >= threshold - TOLERANCE.

    ``exact``: a FAISS flat range search, every pair (i < j) found; O(n^2 d). ``hnsw``: each row's
    ``HNSW_NEIGHBOURS`` approximate nearest neighbours, kept when above the threshold; far faster on large files,
    but a pair can be missed (a row with more near copies than that, or a neighbour the graph does not reach),
    so groups may split. Pairs are folded into component edges whenever more than ``EDGE_BUDGET`` are held, so a
    low threshold costs time, not unbounded memory (only the components matter, not every pair).
    """
    import faiss

    n, dim = unit.shape
    if n < 2:
        return np.empty((0, 2), dtype=np.int64)
    # One block's results are at most block * n pairs: fewer queries per block on large files.
    block = int(np.clip(EDGE_BUDGET // n, 64, QUERY_BLOCK))
    index: faiss.Index
    if search == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 80
        hnsw.add(unit)
        hnsw.hnsw.efSearch = max(64, 2 * HNSW_NEIGHBOURS)
        index = hnsw
    else:
        index = faiss.IndexFlatIP(dim)
        index.add(unit)
    held: list[np.ndarray] = []
    count = 0
    for start in range(0, n, block):
        queries = unit[start : start + block]
        if search == "hnsw":
            scores, found = index.search(queries, min(HNSW_NEIGHBOURS + 1, n))
            rows = np.broadcast_to(np.arange(start, start + len(queries))[:, None], found.shape)
            keep = (found >= 0) & (found != rows) & (scores >= threshold - TOLERANCE)
            rows, found = rows[keep], found[keep]
        else:
            lims, _, found = index.range_search(queries, float(threshold - TOLERANCE))
            rows = np.repeat(np.arange(start, start + len(queries)), np.diff(lims).astype(np.int64))
            keep = found > rows  # each pair once, no self pairs
            rows, found = rows[keep], found[keep]
        held.append(np.stack([rows, found], axis=1))
        count += len(rows)
        if count > EDGE_BUDGET:
            held, count = [component_edges(n, np.concatenate(held))], n
    return np.concatenate(held).astype(np.int64) if held else np.empty((0, 2), dtype=np.int64)


def components(n: int, edges: np.ndarray) -> np.ndarray:
    """Connected-component label of each of ``n`` rows (scipy's csgraph: union-find done well)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not len(edges):
        return np.arange(n)
    graph = coo_matrix((np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def component_edges(n: int, edges: np.ndarray) -> np.ndarray:
    """Edges (root, member) with the same components as ``edges``, at most n of them."""
    labels = components(n, edges)
    roots = np.full(labels.max() + 1, n)
    np.minimum.at(roots, labels, np.arange(n))
    members = np.flatnonzero(roots[labels] != np.arange(n))
    return np.stack([roots[labels[members]], members], axis=1)


def duplicate_labels(
    matrix: np.ndarray,
    vector_rows: np.ndarray,
    texts: list[str | None] | None,
    n: int,
    threshold: float,
    search: str = "exact",
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Group label of each of ``n`` rows, whether each has a usable vector, how many vectors were searched and how
    many rows are exact text copies of an earlier row.

    ``matrix`` holds the vectors of the rows ``vector_rows`` (the rows whose embedding is not null).
    """
    unit, usable = unit_rows(matrix)
    rows = vector_rows[usable]
    unit = unit[usable]
    representative, copy_edges = identical_vectors(unit)
    distinct = np.flatnonzero(representative == np.arange(len(unit)))
    none = np.empty((0, 2), dtype=np.int64)
    near = distinct[near_edges(unit[distinct], threshold, search)] if len(distinct) else none
    copies = text_edges(texts) if texts is not None else np.empty((0, 2), dtype=np.int64)
    has_vector = np.zeros(n, dtype=bool)
    has_vector[rows] = True
    labels = components(n, np.concatenate([rows[copy_edges], rows[near], copies]).astype(np.int64))
    return labels, has_vector, len(distinct), len(copies)


def choose_kept(labels: np.ndarray, has_vector: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    """The row kept for each row's group: one with a vector if any; then the longest text (``lengths``), then first."""
    n = len(labels)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    # lexsort: last key is primary. Rows with a vector first, then longer texts, then earlier rows.
    order = np.lexsort((np.arange(n), -(lengths if lengths is not None else np.zeros(n)), ~has_vector, labels))
    starts = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1]])
    kept_of_label = np.empty(labels.max() + 1, dtype=np.int64)
    kept_of_label[labels[order][starts]] = order[starts]
    return kept_of_label[labels]


# ---------------------------------------------------------------------------------------------- the file


def check_options(threshold: float, keep_rule: str, search: str = "exact") -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ConfigError(f"threshold must be a number in (0, 1], got {threshold!r}") from None
    if not (0 < value <= 1):  # also refuses NaN
        raise ConfigError(
            f"threshold must be a cosine similarity in (0, 1] (1 = identical direction), got {threshold!r}"
        )
    if keep_rule not in KEEP_RULES:
        raise choice_error("keep rule", keep_rule, KEEP_RULES)
    if search not in SEARCHES:
        raise choice_error("search", search, SEARCHES)
    return value


def dedup_file(
    features: str | Path,
    output: str | Path,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    column: str | None = None,
    text_column: str | None = None,
    keep_rule: str = "first",
    search: str = "exact",
    overwrite: bool = False,
    wait: bool = False,
) -> DedupResult:
    """Mark near-duplicate rows of a features file; write every row with the ``OUTPUT_COLUMNS`` to ``output``.

    Args:
        features: a Parquet written by ``embedkit embed``.
        output: the Parquet to write (under the output's lock, atomically).
        threshold: cosine similarity at or above which two rows are duplicates, in (0, 1].
        column: embedding column (default: the only one).
        text_column: texts hashed for exact copies, used by ``keep_rule="longest"`` and shown in examples
            (default: ``text`` when the file has it; without one, duplicates are found by vectors only).
        keep_rule: ``first`` (earliest row of a group) or ``longest`` (longest text; ties go to the first).
            Either way a row with a vector is preferred over one without.
        search: ``exact`` (every pair above the threshold, O(n^2)) or ``hnsw`` (approximate nearest neighbours:
            for files too large for exact search; a pair can be missed, see :func:`near_edges`).
    """
    started = time.perf_counter()
    threshold = check_options(threshold, keep_rule, search)
    feats = open_features(features)
    column = feats.embedding_column(column)
    if text_column is None:
        text_column = feats.text_column
    if text_column is not None:
        feats.require_columns([text_column])
        kind = feats.schema.field(text_column).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise InputError(f"{feats.path}: text column {text_column!r} holds {kind}, not strings")
    elif keep_rule == "longest":
        raise ConfigError(
            f"--keep-rule longest compares texts, and {feats.path} has no 'text' column; name one with "
            f"--text-column (string columns: {', '.join(feats.text_columns) or 'none'})"
        )
    with writing_file(output, overwrite=overwrite, wait=wait) as tmp:
        table = feats.read_table(feats.schema.names)  # a features file or a sharded dataset
        table = table.drop_columns([c for c in OUTPUT_COLUMNS if c in table.column_names])  # a re-run replaces them
        n = table.num_rows
        vectors = table.column(column)
        vector_rows = np.flatnonzero(pc.is_valid(vectors).to_numpy(zero_copy_only=False))
        matrix = matrix_from_arrow(vectors.take(pa.array(vector_rows)), feats.vector_encoding(column))
        texts = table.column(text_column).to_pylist() if text_column else None
        labels, has_vector, searched, copies = duplicate_labels(matrix, vector_rows, texts, n, threshold, search)
        lengths = np.array([len(t) if t else 0 for t in texts]) if keep_rule == "longest" and texts else None
        kept = choose_kept(labels, has_vector, lengths)
        result = DedupResult(
            output=Path(output),
            rows=n,
            column=column,
            threshold=threshold,
            keep_rule=keep_rule,
            searched=searched,
            search=search,
            exact_copies=copies,
            text_column=text_column,
        )
        table = _annotate(table, labels, kept, has_vector, matrix, vector_rows, texts, result)
        meta = {k: v for k, v in (table.schema.metadata or {}).items() if k not in (JOB_KEY, DEDUP_KEY)}
        settings = {"threshold": threshold, "column": column, "text_column": text_column, "keep_rule": keep_rule}
        settings["search"] = search
        meta[DEDUP_KEY] = json.dumps({**settings, "groups": result.groups, "dropped": result.dropped}).encode()
        pq.write_table(table.replace_schema_metadata(meta), tmp)
    result.seconds = time.perf_counter() - started
    return result


def _annotate(
    table: pa.Table,
    labels: np.ndarray,
    kept: np.ndarray,
    has_vector: np.ndarray,
    matrix: np.ndarray,
    vector_rows: np.ndarray,
    texts: list[str | None] | None,
    result: DedupResult,
) -> pa.Table:
    """``table`` with the dedup columns; fills the counts and examples of ``result``."""
    n = len(labels)
    rows = np.arange(n)
    sizes = np.bincount(labels, minlength=labels.max() + 1 if n else 0)[labels] if n else np.zeros(0, dtype=np.int64)
    grouped = sizes > 1
    # Groups numbered 0.. in the order of their kept row, so the numbers read in file order.
    group_of_kept = np.full(n, -1)
    kept_rows = np.unique(kept[grouped])
    group_of_kept[kept_rows] = np.arange(len(kept_rows))
    dup_group = group_of_kept[kept]
    status = np.where(~has_vector, "no_embedding", "unique").astype(object)
    status[grouped & (kept == rows)] = "kept"
    status[grouped & (kept != rows)] = "duplicate"
    keep = kept == rows
    unit, _ = unit_rows(matrix)
    position = np.full(n, -1)
    position[vector_rows] = np.arange(len(vector_rows))
    paired = grouped & ~keep & has_vector & has_vector[kept]
    similarity = np.full(n, np.nan, dtype=np.float32)
    similarity[paired] = np.einsum("ij,ij->i", unit[position[paired]], unit[position[kept[paired]]])
    ids = table.column("id") if "id" in table.column_names else pa.array(rows)
    dup_of = pc.take(ids, pa.array(kept, mask=~(grouped & ~keep)))
    table = table.append_column("dup_group", pa.array(dup_group, mask=~grouped, type=pa.int64()))
    table = table.append_column("dup_status", pa.array(status.tolist(), type=pa.string()))
    table = table.append_column("keep", pa.array(keep))
    table = table.append_column("dup_of", dup_of)
    table = table.append_column("dup_similarity", pa.array(similarity, mask=~paired))
    result.groups = len(kept_rows)
    result.dropped = int((~keep).sum())
    result.no_embedding = int((~has_vector).sum())
    for g, k in enumerate(kept_rows[:EXAMPLES]):
        other = int(np.flatnonzero((kept == k) & (rows != k))[0])
        cos = similarity[other]
        result.examples.append(
            {
                "group": g,
                "size": int(sizes[k]),
                "kept": _show(texts, ids, int(k)),
                "duplicate": _show(texts, ids, other) + ("" if math.isnan(cos) else f" (cosine {cos:.3f})"),
            }
        )
    return table


def _show(texts: list[str | None] | None, ids: pa.Array | pa.ChunkedArray, row: int, width: int = 60) -> str:
    if texts is not None and texts[row]:
        text = normalise_text(texts[row] or "")
        return repr(text if len(text) <= width else text[: width - 1] + "…")
    return f"id {ids[row].as_py()!r}"


__all__ = [
    "DEFAULT_THRESHOLD",
    "KEEP_RULES",
    "SEARCHES",
    "OUTPUT_COLUMNS",
    "DedupResult",
    "dedup_file",
    "normalise_text",
]
