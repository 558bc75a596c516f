"""Re-scoring: an index of int8 or binary vectors re-ranks its top candidates with the float vectors of its rows.

Compact vectors (``embed --vector-dtype int8|binary``) rank well enough to find candidates but not to order them
(binary: recall@10 0.64 vs float32 on MiniLM fortunes, benchmarks/RESULTS.md). When the float vectors of the same
rows are at hand (a float32 / float16 features file embedded with the same settings, ``--rescore-with``), the
build copies them into the index directory as ``vectors.npy`` (row i = FAISS row i, prepared as FAISS holds
them: unit length for cosine), and every search asks the compact index for ``k x factor`` candidates, then
ranks those by the exact inner product / L2 distance with the float vectors and keeps the top k. Exact search
(``--exact``, and the exact path of a very selective ``--where``) compares the float vectors directly.

Why a memory-mapped ``.npy``: a search touches only its candidates' rows (k x factor per query), so the float
copy stays on disk and in the page cache while RAM holds the compact index; ``.npy`` is plain data (read with
``allow_pickle=False``), its header states shape and dtype, which are checked against the manifest, and it is
hashed like every other file of the artefact. A Parquet column would have to be decoded a row group at a time
to reach a few random rows, and a second FAISS index would hold the floats in RAM, which is what compact
vectors are meant to avoid.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError, IncompatibleError, InputError
from ..store import Features, open_features
from ..vectors import decode
from .faiss_ops import _faiss, _metric_type, _pad, _pad_ids, _prepare, _usable_rows

RESCORE_FILE = "vectors.npy"
DEFAULT_FACTOR = 10  # candidates per hit: binary top 100 re-scored gave recall@10 0.99 on MiniLM fortunes
MAX_FACTOR = 1000
COMPACT_DTYPES = ("int8", "binary")
FLOAT_DTYPES = {"float": np.float32, "halffloat": np.float16}  # Arrow value type name -> stored dtype
CHUNK_ROWS = 65536  # float rows read at a time by exact search and by the copy into a new generation
RERANK_QUERIES = 64  # queries re-ranked at a time: bounds the [queries, candidates, dim] block


class FloatVectors:
    """The float vectors of an index's FAISS rows (row i = FAISS row i), possibly memory-mapped.

    Changes are kept lazily so a large file is never read whole: rows appended by ``index add`` are held in
    memory, and a compaction only records which rows remain (``order``); :meth:`write` streams the result.
    """

    def __init__(self, stored: np.ndarray, factor: int = DEFAULT_FACTOR) -> None:
        self.stored = stored
        self.factor = factor
        self.appended = np.empty((0, stored.shape[1]), dtype=stored.dtype)
        self.order: np.ndarray | None = None  # logical row -> row of stored + appended, after a compaction

    @classmethod
    def open(cls, path: Path, rows: int, dim: int, factor: int) -> FloatVectors:
        """Memory-map ``path``; InputError unless it holds ``rows`` x ``dim`` float32 / float16 values."""
        try:
            stored = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(
                f"{path}: the float vectors for re-scoring are unreadable: {exc}; rebuild the index"
            ) from exc
        if stored.ndim != 2 or stored.shape != (rows, dim) or stored.dtype not in (np.float32, np.float16):
            raise InputError(
                f"{path}: expected {rows} x {dim} float32 or float16 vectors, found {stored.shape} {stored.dtype}; "
                "the index is corrupt or was edited by hand: rebuild it"
            )
        return cls(stored, factor)

    @property
    def dtype(self) -> np.dtype:
        return self.stored.dtype

    def __len__(self) -> int:
        return len(self.order) if self.order is not None else len(self.stored) + len(self.appended)

    def take(self, positions: np.ndarray) -> np.ndarray:
        """float32 vectors of these FAISS rows."""
        p = np.asarray(positions, dtype=np.int64)
        if self.order is not None:
            p = self.order[p]
        base = len(self.stored)
        if not len(self.appended):
            return np.asarray(self.stored[p], dtype=np.float32)
        out = np.empty((len(p), self.stored.shape[1]), dtype=np.float32)
        low = p < base
        out[low] = self.stored[p[low]]
        out[~low] = self.appended[p[~low] - base]
        return out

    def append(self, matrix: np.ndarray) -> None:
        start = len(self.stored) + len(self.appended)
        self.appended = np.concatenate([self.appended, matrix.astype(self.dtype)])
        if self.order is not None:
            self.order = np.concatenate([self.order, np.arange(start, start + len(matrix))])

    def keep(self, mask: np.ndarray) -> None:
        """Drop the rows where ``mask`` is False (a compaction)."""
        rows = self.order if self.order is not None else np.arange(len(self))
        self.order = rows[mask]

    def write(self, path: Path) -> None:
        """Write the current rows to ``path`` (.npy), a chunk at a time."""
        out = np.lib.format.open_memmap(path, mode="w+", dtype=self.dtype, shape=(len(self), self.stored.shape[1]))
        for start in range(0, len(self), CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, len(self))
            out[start:stop] = self.take(np.arange(start, stop))
        out.flush()
        del out

    # -- searching

    def candidates(self, k: int, available: int) -> int:
        """How many candidates to ask the compact index for, to return ``k`` re-scored hits."""
        return max(k, min(k * self.factor, available))

    def rerank(self, queries: np.ndarray, positions: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` of each query's candidates (``positions``, -1 = none) by their float vectors.

        Scores as FAISS gives them: inner product (cosine, ip) or squared L2 distance (l2).
        """
        n, c = positions.shape
        scores = np.empty((n, c), dtype=np.float32)
        for start in range(0, n, RERANK_QUERIES):
            block = positions[start : start + RERANK_QUERIES]
            vectors = self.take(np.maximum(block, 0).reshape(-1)).reshape(len(block), c, -1)
            q = queries[start : start + RERANK_QUERIES, None, :]
            if metric == "l2":
                scores[start : start + len(block)] = np.square(vectors - q).sum(axis=2)
            else:
                scores[start : start + len(block)] = np.einsum(
                    "qcd,qcd->qc", vectors, np.broadcast_to(q, vectors.shape)
                )
        worst = np.inf if metric == "l2" else -np.inf
        scores[positions < 0] = worst
        order = np.argsort(scores if metric == "l2" else -scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(positions, order, axis=1)

    def exact(
        self, queries: np.ndarray, k: int, metric: str, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The true top-k among the float vectors (only the ``allowed`` rows, if given), a chunk at a time."""
        faiss = _faiss()
        rows = np.flatnonzero(allowed) if allowed is not None else np.arange(len(self))
        heap = faiss.ResultHeap(len(queries), k, keep_max=metric != "l2")
        for start in range(0, len(rows), CHUNK_ROWS):
            chunk = rows[start : start + CHUNK_ROWS].astype(np.int64)
            d, i = faiss.knn(queries, self.take(chunk), min(k, len(chunk)), metric=_metric_type(metric))
            heap.add_result(_pad(d, k, metric), _pad_ids(np.where(i >= 0, chunk[np.maximum(i, 0)], -1), k))
        heap.finalize()
        return heap.D, heap.I


# ---------------------------------------------------------------------------------------------- building


def check_factor(factor: int) -> int:
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or not 1 <= factor <= MAX_FACTOR:
        raise ConfigError(f"the re-score factor must be a whole number from 1 to {MAX_FACTOR}, got {factor!r}")
    return int(factor)


def open_source(source: str | Path, feats: Features, column: str, compact_dtype: str) -> Features:
    """The float features to re-score with (same column name), checked against the indexed column."""
    if compact_dtype not in COMPACT_DTYPES:
        raise ConfigError(
            f"{feats.path} stores {compact_dtype} vectors, which the index already ranks exactly; re-scoring "
            f"(--rescore-with) is for {' and '.join(COMPACT_DTYPES)} vectors"
        )
    floats = open_features(source)
    if column not in floats.embedding_columns:
        raise InputError(
            f"{floats.path}: no embedding column {column!r} to re-score {feats.path} with; embedding columns: "
            f"{', '.join(floats.embedding_columns) or '(none)'}"
        )
    value_type = floats.schema.field(column).type.value_type
    if str(value_type) not in FLOAT_DTYPES:
        raise InputError(
            f"{floats.path}: column {column!r} holds {value_type} vectors; re-scoring needs float32 or float16 "
            "vectors (embed with --vector-dtype float32 or float16)"
        )
    if floats.schema.field(column).type.list_size != feats.schema.field(column).type.list_size:
        raise IncompatibleError(f"{floats.path} column {column!r} has another dimension than {feats.path}")
    mine, theirs = feats.column_config(column), floats.column_config(column)
    a, b = mine.replace(dtype="float32").vector_settings(), theirs.replace(dtype="float32").vector_settings()
    diff = [f"{k}={a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    model = mine.model_difference(theirs)
    if model:
        diff.append(model)
    if diff:
        raise IncompatibleError(
            f"{floats.path} was embedded differently from {feats.path} ({'; '.join(diff)}); "
            "re-scoring needs the float vectors of the same rows, embedded with the same settings"
        )
    return floats


def gather(
    ids: pa.Array | pa.ChunkedArray,
    floats: Features,
    column: str,
    metric: str,
    out: np.ndarray,
    batch_rows: int,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Fill ``out[i]`` with the prepared float vector of the row of ``floats`` whose id is ``ids[i]``.

    Streams ``floats`` once in batches; only the id column is read whole. InputError when an id is missing or its
    float vector is null or not finite.
    """
    try:
        source_ids = floats.read_table(["id"]).column("id")  # a features file or a sharded dataset
        wanted = ids.cast(source_ids.type) if ids.type != source_ids.type else ids
        where = pc.index_in(wanted, value_set=source_ids.combine_chunks())
    except (KeyError, pa.ArrowException) as exc:
        raise InputError(f"{floats.path}: its ids cannot be matched with the indexed rows' ids: {exc}") from exc
    where_arr = where.combine_chunks() if isinstance(where, pa.ChunkedArray) else where
    missing = where_arr.null_count
    if missing:
        absent = pc.filter(wanted, pc.is_null(where_arr)).slice(0, 5).to_pylist()
        raise InputError(
            f"{floats.path}: {missing} indexed row(s) have no float vector there (ids {', '.join(map(str, absent))}"
            f"{', ...' if missing > 5 else ''}); re-scoring needs the float vectors of every indexed row"
        )
    source_rows = where_arr.to_numpy(zero_copy_only=False).astype(np.int64)
    order = np.argsort(source_rows, kind="stable")
    sorted_rows = source_rows[order]
    seen = 0
    for batch in floats.iter_tables([column], batch_rows):
        lo, hi = np.searchsorted(sorted_rows, [seen, seen + batch.num_rows])
        if hi > lo:
            array = batch.column(0).combine_chunks()
            picked = pa.array(sorted_rows[lo:hi] - seen)
            taken = array.take(picked)
            if taken.null_count:
                raise InputError(f"{floats.path}: {taken.null_count} indexed row(s) have a null float vector there")
            matrix = decode(taken)
            if not _usable_rows(matrix).all():
                raise InputError(f"{floats.path}: float vectors of indexed rows hold NaN or infinite values")
            out[order[lo:hi]] = _prepare(matrix, metric)
            if progress is not None:
                progress(hi - lo)
        seen += batch.num_rows


def write_source(
    path: Path, ids: pa.Table, floats: Features, column: str, metric: str, batch_rows: int
) -> FloatVectors:
    """Write the float vectors of the rows of ``ids`` (in its order) to ``path`` and map them."""
    dtype = FLOAT_DTYPES[str(floats.schema.field(column).type.value_type)]
    dim = floats.schema.field(column).type.list_size
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(ids.num_rows, dim))
    gather(ids.column("id"), floats, column, metric, out, batch_rows)
    out.flush()
    del out
    return FloatVectors.open(path, ids.num_rows, dim, DEFAULT_FACTOR)


def evaluate(index, floats: FloatVectors, positions: np.ndarray, metric: str, k: int = 10) -> dict[str, Any] | None:
    """recall@k of the compact index vs exact float search, without and with re-scoring (leave-one-out).

    Queries are the float vectors of indexed rows (as ``search`` embeds float queries); a query's own row is
    left out of every answer.
    """
    k = min(k, len(floats) - 1)
    if not len(positions) or k < 1:
        return None
    queries = floats.take(positions)
    _, truth = floats.exact(queries, k + 1, metric)
    _, plain = index.search(queries, k + 1)
    fetch = min(k * floats.factor, len(floats) - 1) + 1
    _, wide = index.search(queries, fetch)
    wide = np.where(wide == positions[:, None], -1, wide)
    _, rescored = floats.rerank(queries, wide, k, metric)

    def recall(found: np.ndarray) -> float:
        hits = [len(set(f[(f >= 0) & (f != p)][:k]) & set(t[t != p][:k])) for f, t, p in zip(found, truth, positions)]
        return round(float(np.mean(hits)) / k, 4)

    return {"queries": len(positions), "k": k, "without": recall(plain), "with": recall(rescored)}


def summary_lines(entry: dict[str, Any] | None, compact_dtype: str | None) -> list[str]:
    """What the build report says about re-scoring."""
    if entry is None:
        if compact_dtype in COMPACT_DTYPES:
            return [
                f"note: the vectors are {compact_dtype}; search ranks by them alone (MiniLM fortunes: recall@10 "
                "vs float32 0.99 int8, 0.64 binary); give their float features with --rescore-with to re-rank "
                "the top candidates exactly"
            ]
        return []
    line = (
        f"re-scoring: top k x {entry['factor']} candidates re-ranked with the {entry['dtype']} vectors of "
        f"{RESCORE_FILE} (memory-mapped, {entry['bytes'] / 2**20:.1f} MB on disk)"
    )
    measured = entry.get("recall")
    if measured:
        line += (
            f"; recall@{measured['k']} vs exact float search on {measured['queries']} indexed rows (leave-one-out): "
            f"{measured['without']:.3f} without, {measured['with']:.3f} with"
        )
    return [line]


def build_entry(
    stage_path: Path,
    index,
    ids: pa.Table,
    floats: Features,
    column: str,
    metric: str,
    factor: int,
    query_positions: np.ndarray,
    batch_rows: int,
) -> dict[str, Any]:
    """Write ``vectors.npy`` for a build and return its ``index.json`` entry (with the measured recall)."""
    vectors = write_source(stage_path, ids, floats, column, metric, batch_rows)
    vectors.factor = factor
    return {
        "file": RESCORE_FILE,
        "factor": factor,
        "dtype": str(vectors.dtype),
        "source": str(Path(floats.path).resolve()),
        "bytes": stage_path.stat().st_size,
        "recall": evaluate(index, vectors, query_positions, metric),
    }


def load(directory: Path, meta: dict[str, Any], rows: int, dim: int) -> FloatVectors | None:
    """The float vectors an index re-scores with (None when ``index.json`` has no ``rescore`` entry).

    The file's sha256 was verified with the others (it is listed in ``files``); here its entry and shape.
    """
    entry = meta.get("rescore")
    if entry is None:
        return None
    where = directory / "index.json"
    if (
        not isinstance(entry, dict)
        or entry.get("file") != RESCORE_FILE
        or RESCORE_FILE not in (meta.get("files") or {})
        or isinstance(entry.get("factor"), bool)
        or not isinstance(entry.get("factor"), int)
        or not 1 <= entry["factor"] <= MAX_FACTOR
    ):
        shown = repr(entry)[:120]
        raise InputError(
            f"{where}: field 'rescore' is {shown}; expected the entry of {RESCORE_FILE} (listed in 'files') with a "
            f"factor from 1 to {MAX_FACTOR}. The index is corrupt or was edited by hand: rebuild it"
        )
    return FloatVectors.open(directory / RESCORE_FILE, rows, dim, entry["factor"])


def add_rows(
    index, new_ids: pa.Table, feats: Features, column: str, source: str | Path | None, batch_rows: int
) -> None:
    """Append the float vectors of rows being added to ``index`` (``index add`` / ``upsert``), from ``source``."""
    if index.float_vectors is None:
        raise ConfigError(
            f"{index.directory} was built without float vectors to re-score with; --rescore-with applies to an "
            "index built with it (rebuild with `index build --rescore-with`)"
        )
    if source is None:
        raise InputError(
            f"{index.directory} re-ranks its candidates with float vectors ({RESCORE_FILE}): give the float "
            "features of the added rows with --rescore-with (rescore_with= in Python)"
        )
    floats = open_source(source, feats, column, feats.column_config(column).dtype)
    out = np.empty((new_ids.num_rows, index.dim), dtype=index.float_vectors.dtype)
    gather(new_ids.column("id"), floats, column, index.metric, out, batch_rows)
    index.float_vectors.append(out)


def write_generation(index, path: Path) -> None:
    """Write the float vectors of a changed index into its next generation and map the written file."""
    vectors = index.float_vectors
    vectors.write(path)
    index.float_vectors = FloatVectors.open(path, len(vectors), index.dim, vectors.factor)
    index.meta.setdefault("rescore", {})["bytes"] = path.stat().st_size
