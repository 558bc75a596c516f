"""Bytes per vector and recall@10 of each storage dtype (float32, float16, int8, binary) on real sentence vectors.

Input: a float32 features file (e.g. fortunes embedded with MiniLM). Its vectors are written again in each dtype
through embed's own storage path (committed parts, then the merge that quantises int8), read back through the
one reader every stage uses, and searched exactly (cosine, brute force): recall@10 is the share of the float32
top 10 (self excluded) that the stored dtype's top 10 finds, for float32 queries (what `search` embeds).

Then, for int8 and binary, the index: ``build_index(..., rescore_with=<the float32 file>)`` (flat and hnsw; int8 with
its default SQ8 codes and with float32 codes), searched
with the float32 queries (own row excluded) without re-scoring (``rescore=False``: the compact vectors alone) and
with it (top k x 10 candidates re-ranked with the float vectors of ``vectors.npy``), plus the index's bytes per
vector (FAISS file, float copy).

Also measured, not stored by embedkit: int8 with the scale calibrated on the first part only (values above it
clipped), with one scale for all dimensions, binary of centred vectors.

    PYTHONPATH=. python benchmarks/vector_dtypes.py FEATURES [--queries 1000]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedkit import vectors
from embedkit.index import Index, build_index
from embedkit.index.rescore import RESCORE_FILE
from embedkit.parts import PartWriter
from embedkit.store import open_features

PART_ROWS = 1024  # several parts, so the int8 scale really comes from more than one


def store(matrix: np.ndarray, meta: dict, dtype: str, path: Path) -> None:
    """Write ``matrix`` as embed does with --vector-dtype ``dtype`` (parts, then the merge)."""
    meta = {**meta, "config": {**meta["config"], "dtype": dtype}, "columns": ["embedding"]}
    valid = np.ones(len(matrix), dtype=bool)
    with PartWriter(path, {"benchmark": dtype}, overwrite=True) as writer:
        for start in range(0, len(matrix), PART_ROWS):
            block = matrix[start : start + PART_ROWS]
            ids = pa.array(np.arange(start, start + len(block)))
            writer.commit(pa.table({"id": ids, "embedding": vectors.part_array(block, valid[: len(block)], dtype)}))
        writer.finish(meta)


def top_k(queries: np.ndarray, base: np.ndarray, query_rows: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k most cosine-similar rows of ``base`` for each query, the query's own row excluded."""
    unit = base / np.maximum(np.linalg.norm(base, axis=1, keepdims=True), 1e-12)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q @ unit.T
    sims[np.arange(len(q)), query_rows] = -np.inf
    part = np.argpartition(-sims, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def compact_codecs(
    tmp: Path, queries: np.ndarray, query_rows: np.ndarray, truth: np.ndarray, floats: np.ndarray
) -> str:
    """Measured, not built: FAISS codes for binary vectors as small as the stored dtype (the index holds float32)."""
    import faiss

    unit = floats / np.linalg.norm(floats, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    rows = []
    # int8 as SQ8 is what index build now does by default (the index table above); binary's options stay here.
    for dtype, factory in (("binary", "SQ4"), ("binary", "packed bits")):
        decoded, _, _ = open_features(tmp / f"{dtype}.parquet").load()
        decoded = decoded / np.linalg.norm(decoded, axis=1, keepdims=True)
        if factory == "packed bits":  # IndexBinaryFlat: Hamming distance between sign bits of query and row
            index = faiss.IndexBinaryFlat(decoded.shape[1])
            index.add(np.packbits(decoded > 0, axis=1))
            search = lambda k, index=index: index.search(np.packbits(q > 0, axis=1), k)[1]  # noqa: E731
        else:
            index = faiss.index_factory(decoded.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
            index.train(decoded)
            index.add(decoded)
            search = lambda k, index=index: index.search(q, k)[1]  # noqa: E731
        nbytes = (
            faiss.serialize_index_binary(index).size if factory == "packed bits" else faiss.serialize_index(index).size
        )
        found = search(101)
        found = np.array([f[f != r][:100] for f, r in zip(found, query_rows)])
        sims = np.einsum("qd,qcd->qc", q, unit[found])
        rescored = np.take_along_axis(found, np.argsort(-sims, axis=1)[:, :10], axis=1)
        rows.append(
            f"| {dtype} as {factory} (flat; measured, not built) | {nbytes / len(floats):,.0f} | "
            f"{recall(found[:, :10], truth):.3f} | {recall(rescored, truth):.3f} |"
        )
    head = "\n| FAISS codes | bytes/vector | recall@10 without | top 100 re-scored |\n|---|---:|---:|---:|\n"
    return head + "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("features", type=Path)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    feats = open_features(args.features)
    matrix, _, _ = feats.load()
    n, dim = matrix.shape
    rng = np.random.default_rng(args.seed)
    query_rows = rng.choice(n, size=min(args.queries, n), replace=False)
    queries = matrix[query_rows]
    truth = top_k(queries, matrix, query_rows, 10)
    print(f"{args.features}: {n} vectors, dim {dim}; {len(query_rows)} queries; recall@10 vs float32 exact search")
    print("| dtype | payload bytes/vector | Parquet bytes/vector (embedding column alone) | recall@10 |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in vectors.VECTOR_DTYPES:
            path = Path(tmp) / f"{dtype}.parquet"
            store(matrix, feats.meta, dtype, path)
            stored = open_features(path)
            decoded, _, _ = stored.load()
            groups = pq.ParquetFile(path).metadata.num_row_groups
            on_disk = sum(
                pq.ParquetFile(path).metadata.row_group(g).column(1).total_compressed_size for g in range(groups)
            )
            r = recall(top_k(queries, decoded, query_rows, 10), truth)
            print(f"| {dtype} | {vectors.stored_bytes_per_vector(dim, dtype):g} | {on_disk / n:.1f} | {r:.3f} |")
        print()
        print(
            "| index over | kind | FAISS codes | FAISS bytes/vector (RAM) | vectors.npy bytes/vector | "
            "recall@10 without | re-scored |"
        )
        print("|---|---|---|---:|---:|---:|---:|")
        # codes None: the default (sq8 for int8, float32 for binary); int8 with float32 codes for comparison.
        for dtype, codes in (("int8", None), ("int8", "float32"), ("binary", None)):
            for kind in ("flat", "hnsw"):
                directory = Path(tmp) / f"ix-{dtype}-{codes}-{kind}"
                report = build_index(
                    Path(tmp) / f"{dtype}.parquet",
                    directory,
                    kind=kind,
                    rescore_with=Path(tmp) / "float32.parquet",
                    eval_queries=args.queries,
                    codes=codes,
                )
                index = Index.load(directory)
                own = np.array([index.position_of(int(r)) for r in query_rows])
                ids = index.ids.column("id").to_numpy()
                found = {
                    flag: ids[index.search_vectors(queries, 10, exclude=own, rescore=flag).positions]
                    for flag in (False, True)
                }
                faiss_bytes = (directory / "index.faiss").stat().st_size / n
                npy_bytes = (directory / RESCORE_FILE).stat().st_size / n
                print(
                    f"| {dtype} | {index.kind} | {report.codes}{' (default)' if codes is None else ''} | "
                    f"{faiss_bytes:,.0f} | {npy_bytes:,.0f} | "
                    f"{recall(found[False], truth):.3f} | {recall(found[True], truth):.3f} |"
                )
        print(compact_codecs(Path(tmp), queries, query_rows, truth, matrix))
    print()
    # Alternatives to the stored int8 scale (max over the whole file, per dimension), measured for the choice.
    first = vectors.int8_scale(vectors.finite_max_abs(matrix[:PART_ROWS]))
    global_scale = np.full(dim, np.abs(matrix).max() / vectors.INT8_MAX, dtype=np.float32)
    clipped = float(np.mean(np.abs(matrix[PART_ROWS:]) > first * vectors.INT8_MAX)) if n > PART_ROWS else 0.0
    for name, scale in (("int8, scale from the first part only (clipped)", first), ("int8, one scale", global_scale)):
        decoded = vectors.quantize_int8(matrix, scale).astype(np.float32) * scale
        print(f"| {name} (not stored) | {dim} | | {recall(top_k(queries, decoded, query_rows, 10), truth):.3f} |")
    centred = np.where(matrix - matrix.mean(axis=0) > 0, 1.0, -1.0).astype(np.float32)
    r = recall(top_k(queries - matrix.mean(axis=0), centred, query_rows, 10), truth)
    print(f"| binary of centred vectors (not stored) | {dim / 8:g} | | {r:.3f} |")
    print(f"share of values after the first part above its calibrated maximum: {clipped:.4%}")


if __name__ == "__main__":
    main()
