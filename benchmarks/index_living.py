"""Filtered search and deletions on a living index: recall@10 against brute force, queries/s, compaction time.

Synthetic clustered vectors (no model needed), each row with a ``section`` (1 of 50) and a ``year`` column:
for each kind, recall@10 and queries/s of ``search --where`` at several selectivities (the true top 10 among the
matching rows is the reference), then 10% of the rows deleted (recall among the live rows, then compaction time).

    python benchmarks/index_living.py --rows 100000 --dim 128
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedkit.config import ExtractConfig
from embedkit.index import Index, build_index, compact_index, delete_from_index
from embedkit.store import vectors_to_arrow, with_metadata

FILTERS = {  # name -> (condition, predicate on row number)
    "50%": ("year >= 2013", lambda i: (i % 10) >= 5),
    "10%": ("year = 2009", lambda i: (i % 10) == 1),
    "2% (section)": ("section = 's7'", lambda i: (i % 50) == 7),
    "0.2%": ("section = 's7' AND year = 2015", lambda i: (i % 50) == 7 and (i % 10) == 7),
}


def features(path: Path, rows: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((200, dim)) * 3
    x = (centres[rng.integers(200, size=rows)] + rng.standard_normal((rows, dim))).astype(np.float32)
    i = np.arange(rows)
    table = pa.table(
        {
            "id": pa.array(i),
            "section": pa.array([f"s{v}" for v in i % 50]),
            "year": pa.array(2008 + i % 10),
            "embedding": vectors_to_arrow(x, np.ones(rows, bool), "float32"),
        }
    )
    meta = {"format_version": 1, "config": ExtractConfig(model="synthetic", layers=(2,)).to_dict()}
    pq.write_table(table.cast(with_metadata(table.schema, meta)), path)
    return x


def truth(x: np.ndarray, queries: np.ndarray, allowed: np.ndarray, k: int = 10) -> list[set[int]]:
    rows = np.flatnonzero(allowed)
    out = []
    for q in queries:
        d = ((x[rows] - q) ** 2).sum(1)
        out.append(set(rows[np.argpartition(d, k)[:k]].tolist()))
    return out


def recall(index: Index, found: np.ndarray, expected: list[set[int]]) -> float:
    ids = np.asarray(index.ids.column("id"))
    return float(np.mean([len(set(ids[f[f >= 0]].tolist()) & t) / 10 for f, t in zip(found, expected)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--kinds", default="flat,hnsw,ivf")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="embedkit-living-"))
    x = features(work / "f.parquet", args.rows, args.dim)
    queries = x[np.random.default_rng(1).choice(args.rows, args.queries, replace=False)] + 0.05
    i = np.arange(args.rows)
    print(f"{args.rows:,} x {args.dim}, {args.queries} queries; recall@10 vs brute force among matching rows")
    for kind in args.kinds.split(","):
        start = time.perf_counter()
        build_index(work / "f.parquet", work / kind, kind=kind, metric="l2", store=["section", "year"])
        index = Index.load(work / kind)
        print(f"\n{kind}: built in {time.perf_counter() - start:.1f}s, params {index.meta['params'] or 'exact'}")
        for name, (where, keep) in FILTERS.items():
            allowed = np.array([keep(v) for v in i])
            expected = truth(x, queries, allowed)
            start = time.perf_counter()
            found = index.search(queries, k=10, where=where).positions
            seconds = time.perf_counter() - start
            print(
                f"  --where {where!r:<34} {name:>12}: recall@10 {recall(index, found, expected):.3f}, "
                f"{len(queries) / seconds:,.0f} queries/s"
            )
        gone = i[i % 10 == 3]  # 10%: below the compaction threshold
        start = time.perf_counter()
        delete_from_index(work / kind, gone.tolist())
        deleted_s = time.perf_counter() - start
        index = Index.load(work / kind)
        expected = truth(x, queries, i % 10 != 3)
        found = index.search(queries, k=10).positions
        print(
            f"  delete 10% ({len(gone):,} ids): {deleted_s:.1f}s; recall@10 among live rows "
            f"{recall(index, found, expected):.3f}; recall_now {index.meta['build'].get('recall_now')}"
        )
        start = time.perf_counter()
        compact_index(work / kind)
        index = Index.load(work / kind)
        found = index.search(queries, k=10).positions
        print(f"  compact: {time.perf_counter() - start:.1f}s; recall@10 after {recall(index, found, expected):.3f}")


if __name__ == "__main__":
    main()
