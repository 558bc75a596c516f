"""Time and peak memory of ``embedkit cluster`` on 100,000 rows of 768-d vectors.

Writes synthetic clustered vectors shaped like GPT-2 hidden states (planted clusters, a large shared offset
and a few rogue high-variance dimensions) as an embedkit-style Parquet, then runs the real CLI once per
configuration in a child process and prints wall time, the child's peak RSS, the data size and the agreement
(NMI) with the planted clusters. The CLI's own baseline (imports alone) is measured the same way, so the
clustering's memory shows as the difference.

    python benchmarks/cluster_scale.py                       # 100,000 x 768, the default configurations
    python benchmarks/cluster_scale.py --rows 20000 --configs "kmeans --k 20"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedkit import ExtractConfig
from embedkit.store import vectors_to_arrow, with_metadata

DEFAULT_CONFIGS = (
    "--method kmeans --k 20",
    "--method kmeans --k auto",
    "--method minibatch-kmeans --k 20",
    "--method agglomerative --k 20",
    "--method hdbscan --min-cluster-size 200",
)
WRITE_ROWS = 10_000


def write_synthetic(path: Path, rows: int, dim: int, clusters: int, seed: int) -> None:
    """Planted clusters in 768-d with GPT-2's anisotropy, written chunk by chunk with embedkit metadata."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    offset = rng.normal(loc=3.0, scale=0.5, size=dim).astype(np.float32)  # shared component: cosines near 1
    rogue = rng.choice(dim, size=3, replace=False)
    config = ExtractConfig(model="synthetic-gpt2-shaped", layers=(-1,), pooling=("mean",))
    meta = {
        "format_version": 1,
        "config": config.to_dict(),
        "created_at": datetime.now(timezone.utc).isoformat(),
        "model": {"name": "synthetic-gpt2-shaped", "hidden_size": dim, "num_layers": 12},
        "columns": ["embedding"],
    }
    schema = with_metadata(
        pa.schema([("id", pa.int64()), ("label", pa.int32()), ("embedding", pa.list_(pa.float32(), dim))]), meta
    )
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, WRITE_ROWS):
            n = min(WRITE_ROWS, rows - start)
            labels = rng.integers(0, clusters, size=n)
            x = centres[labels] * 0.35 + rng.normal(size=(n, dim)).astype(np.float32) + offset
            x[:, rogue] += rng.normal(size=(n, 3)).astype(np.float32) * np.float32(25.0)
            table = pa.table(
                {
                    "id": pa.array(np.arange(start, start + n)),
                    "label": pa.array(labels.astype(np.int32)),
                    "embedding": vectors_to_arrow(x.astype(np.float32), np.ones(n, dtype=bool), "float32"),
                },
                schema=schema,
            )
            writer.write_table(table)


def run_child(args: list[str]) -> tuple[float, float, int, str]:
    """Run a command; return its wall seconds, its own peak RSS in MiB (from wait4), exit status and stderr."""
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return seconds, usage.ru_maxrss / 1024, proc.returncode, err.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--clusters", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--configs", nargs="*", default=list(DEFAULT_CONFIGS), help="embedkit cluster option strings, one run each"
    )
    parser.add_argument("--workdir", default=None, help="Where to write the data and outputs [default: a temp dir].")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="cluster_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"synthetic_{args.rows}x{args.dim}.parquet"
    t0 = time.perf_counter()
    write_synthetic(data, args.rows, args.dim, args.clusters, args.seed)
    raw_mib = args.rows * args.dim * 4 / 2**20
    print(
        f"data: {args.rows:,} x {args.dim} float32 = {raw_mib:,.0f} MiB in memory, "
        f"{data.stat().st_size / 2**20:,.0f} MiB "
        f"on disk, {args.clusters} planted clusters (written in {time.perf_counter() - t0:.1f}s)"
    )
    embedkit = [str(Path(sys.executable).with_name("embedkit"))]

    seconds, rss, _, _ = run_child([*embedkit, "info", str(data)])
    print(f"{'baseline: embedkit info (imports only)':<46} {seconds:7.1f}s  peak RSS {rss:7.0f} MiB")
    print(
        f"{'configuration':<46} {'wall':>8}  {'peak RSS':>14}  {'RSS/data':>8}  "
        f"{'k':>3}  {'NMI':>6}  {'silh.':>6}  stages"
    )
    for i, options in enumerate(args.configs):
        out = work / f"out{i}"
        cmd = [
            *embedkit,
            "cluster",
            str(data),
            "-o",
            str(out),
            "--label-column",
            "label",
            "--quiet",
            "--overwrite",
            *shlex.split(options),
        ]
        seconds, rss, code, stderr = run_child(cmd)
        if code != 0:
            print(f"{options:<46} failed ({code}): {stderr.strip()[-300:]}")
            continue
        s = json.loads((out / "summary.json").read_text())
        m, t = s["metrics"], s["timings"]
        stages = ", ".join(f"{k[:-2]} {v:.1f}" for k, v in t.items() if k != "total_s")
        print(
            f"{options:<46} {seconds:7.1f}s  {rss:10.0f} MiB  {rss / raw_mib:7.2f}x  "
            f"{s['k']:>3}  {m.get('nmi', float('nan')):6.3f}  "
            f"{m['silhouette'] if m['silhouette'] is not None else float('nan'):6.3f}  {stages}"
        )
    print(f"outputs in {work}")


if __name__ == "__main__":
    main()
