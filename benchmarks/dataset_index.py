"""``index build`` from a sharded dataset vs the same vectors in one file: peak RSS, time, recall@10.

Synthetic clustered vectors (no model needed) are written shard by shard as a dataset (``embedkit.dataset``) and,
row group by row group, as one features file; each is indexed in a fresh process (``build_index``, the path of
``embedkit index build``), which prints its own peak RSS. The dataset streams one shard at a time, so its peak
should match the single file's (the index itself, plus a batch) and stay far below the vectors' size.

    python benchmarks/dataset_index.py --rows 200000 --dim 384 --shards 20 --kind ivf
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedkit.config import ExtractConfig
from embedkit.dataset import DatasetWriter, write_shard
from embedkit.store import vectors_to_arrow, with_metadata

META = {"format_version": 1, "config": ExtractConfig(model="synthetic", layers=(2,), max_length=64, stride=8).to_dict()}

CHILD = """
import json, resource, sys, time
from embedkit.index import build_index
t = time.perf_counter()
r = build_index(sys.argv[1], sys.argv[2], kind=sys.argv[3])
print(json.dumps({"seconds": time.perf_counter() - t, "rows": r.rows, "factory": r.factory,
                  "recall_at_10": r.recall_at_10, "index_bytes": r.index_bytes,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def chunk(start: int, rows: int, dim: int, centres: np.ndarray) -> pa.Table:
    rng = np.random.default_rng(start)
    x = (centres[rng.integers(len(centres), size=rows)] + rng.standard_normal((rows, dim))).astype(np.float32)
    ids = pa.array(np.arange(start, start + rows))
    return pa.table({"id": ids, "embedding": vectors_to_arrow(x, np.ones(rows, bool), "float32")})


def write(root: Path, rows: int, dim: int, shards: int) -> tuple[Path, Path]:
    centres = np.random.default_rng(0).standard_normal((200, dim)).astype(np.float32) * 3
    per = -(-rows // shards)
    single, dataset = root / "single.parquet", root / "ds"
    schema = with_metadata(chunk(0, 1, dim, centres).schema, META)
    with pq.ParquetWriter(single, schema) as one, DatasetWriter(dataset, {"bench": [rows, dim, shards]}) as ds:
        for i, start in enumerate(range(0, rows, per)):
            table = chunk(start, min(per, rows - start), dim, centres)
            one.write_table(table.cast(schema))
            ds.record(write_shard(ds.staging, i, table))
        ds.finish(META)
    return single, dataset


def build(features: Path, out: Path, kind: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(features), str(out), kind], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--kind", default="ivf")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        single, dataset = write(root, args.rows, args.dim, args.shards)
        vectors_mb = args.rows * args.dim * 4 / 2**20
        print(
            f"{args.rows:,} x {args.dim} float32 ({vectors_mb:,.0f} MB of vectors), {args.shards} shards, "
            f"--kind {args.kind}"
        )
        for name, path in (("dataset", dataset), ("single file", single)):
            r = build(path, root / f"ix-{name.replace(' ', '-')}", args.kind)
            print(
                f"{name:<12} {r['factory']}: {r['seconds']:.1f}s, index {r['index_bytes'] / 2**20:,.0f} MB, "
                f"peak RSS {r['peak_rss_bytes'] / 2**20:,.0f} MB, recall@10 {r['recall_at_10']}"
            )


if __name__ == "__main__":
    main()
