"""``index build`` from a sharded dataset vs the same vectors in one file, and ``--engine ray`` vs local: peak RSS,
time, recall@10, bytes the driver read during the build.

Synthetic clustered vectors (no model needed) are written shard by shard as a dataset (``embedkit.dataset``) and,
row group by row group, as one features file; each is indexed in a fresh process (``build_index``, the path of
``embedkit index build``), which prints its own peak RSS and the bytes it read during the build (``rchar`` of
/proc/self/io; imports done before). The dataset streams one shard at a time, so its peak should match the single
file's (the index itself, plus a batch) and stay far below the vectors' size. With ``--ray N`` the dataset is also
indexed with ``--engine ray`` on a local Ray instance of N CPUs (the Ray start is timed apart), and the index
files are compared with the local build's.

    python benchmarks/dataset_index.py --rows 200000 --dim 384 --shards 20 --kind ivf
    python benchmarks/dataset_index.py --rows 300000 --dim 384 --shards 30 --kind ivf --ray 2 --no-single
"""

from __future__ import annotations

import argparse
import json
import os
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
import json, pathlib, resource, sys, time
import faiss, pyarrow.parquet
from embedkit.index import build_index
from embedkit.index.ray_build import RayAdds


def rchar():  # bytes this process read through system calls (files, sockets), page cache hits included
    return int(dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())["rchar"])


engine, ray_seconds = None, 0.0
if sys.argv[4] != "0":
    import ray
    t = time.perf_counter()
    ray.init(address="local", num_cpus=int(sys.argv[4]), include_dashboard=False, logging_level="WARNING")
    ray_seconds = time.perf_counter() - t
    engine = RayAdds(workers=int(sys.argv[4]))
t, read = time.perf_counter(), rchar()
r = build_index(sys.argv[1], sys.argv[2], kind=sys.argv[3], engine=engine)
seconds, read = time.perf_counter() - t, rchar() - read
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
shared = int(status["RssShmem"].split()[0]) * 1024  # mapped object-store pages (Ray), not this process's own
hashed = sum(p.stat().st_size for p in pathlib.Path(sys.argv[2]).iterdir())  # sealing the index hashes them
print(json.dumps({"seconds": seconds, "ray_start_seconds": ray_seconds, "rows": r.rows, "factory": r.factory,
                  "recall_at_10": r.recall_at_10, "index_bytes": r.index_bytes, "read_bytes": read,
                  "hashed_bytes": hashed, "shared_rss_bytes": shared,
                  "worker_peak_rss_bytes": getattr(engine, "worker_peak_rss_bytes", 0),
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


def build(features: Path, out: Path, kind: str, ray_cpus: int = 0) -> dict:
    command = [sys.executable, "-c", CHILD, str(features), str(out), kind, str(ray_cpus)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--kind", default="ivf")
    parser.add_argument("--ray", type=int, default=0, metavar="N", help="also build with --engine ray on N CPUs")
    parser.add_argument("--no-single", action="store_true", help="skip the single-file build")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        single, dataset = write(root, args.rows, args.dim, args.shards)
        vectors_mb = args.rows * args.dim * 4 / 2**20
        print(
            f"{args.rows:,} x {args.dim} float32 ({vectors_mb:,.0f} MB of vectors), {args.shards} shards, "
            f"--kind {args.kind}"
        )
        data_mb = sum(p.stat().st_size for p in dataset.glob("part-*.parquet")) / 2**20
        print(f"load average before: {os.getloadavg()[0]:.2f}; dataset {data_mb:,.0f} MB on disk")
        runs = [("dataset", dataset, 0)] + ([] if args.no_single else [("single file", single, 0)])
        runs += [(f"ray x{args.ray}", dataset, args.ray)] if args.ray else []
        for name, path, cpus in runs:
            r = build(path, root / f"ix-{name.replace(' ', '-')}", args.kind, cpus)
            ray = f" (+{r['ray_start_seconds']:.1f}s Ray start)" if cpus else ""
            workers = (
                f" (object-store pages mapped at the end {r['shared_rss_bytes'] / 2**20:,.0f} MB), worker peak RSS "
                f"{r['worker_peak_rss_bytes'] / 2**20:,.0f} MB"
                if cpus
                else ""
            )
            print(
                f"{name:<12} {r['factory']}: {r['seconds']:.1f}s{ray}, index {r['index_bytes'] / 2**20:,.0f} MB, "
                f"driver peak RSS {r['peak_rss_bytes'] / 2**20:,.0f} MB{workers}, driver read "
                f"{r['read_bytes'] / 2**20:,.0f} MB (of which {r['hashed_bytes'] / 2**20:,.0f} MB hashing the index "
                f"it wrote), recall@10 {r['recall_at_10']:.4f}"
            )
        if args.ray:
            same = all(
                (root / "ix-dataset" / f).read_bytes() == (root / f"ix-ray-x{args.ray}" / f).read_bytes()
                for f in ("index.faiss", "ids.parquet")
            )
            print(f"ray index.faiss and ids.parquet identical to the local build's: {same}")
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
