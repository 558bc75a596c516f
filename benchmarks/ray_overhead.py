"""What `embedkit embed --engine ray` costs over the local engine on one machine.

Embeds the same fortunes with both engines and prints wall time, rows/s and the Ray overhead, split into
starting Ray and the rest (actor start: each imports torch and loads the model; per-part scheduling and
transfer). Both outputs are compared (same ids, vectors within 1e-5). On one machine Ray can only lose:
the figure says how much, i.e. how large a job must be before spreading it over more machines pays.

    python benchmarks/ray_overhead.py [--n 1000] [--model /tmp/gpt2-small] [--cpus 2] [--part-rows 128] [--repeats 1]

``--model`` defaults to a GPT-2-shaped checkpoint (random weights: speed only), built on first use with
``python -m embedkit.testing.checkpoint``.

Results: benchmarks/RESULTS.md, "Ray engine overhead" (and docs/ray.md).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from benchmarks.corpus import load_fortunes  # noqa: E402
from embedkit import ExtractConfig  # noqa: E402
from embedkit.embed import embed_file  # noqa: E402
from embedkit.engines.ray import embed_file_ray  # noqa: E402


def ensure_model(path: Path) -> Path:
    if not (path / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "embedkit.testing.checkpoint", str(path)], check=True)
    return path


def write_input(directory: Path, n: int) -> Path:
    path = directory / "fortunes.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "category"])
        writer.writerows(load_fortunes(n, seed=0))
    return path


def max_difference(a: Path, b: Path) -> float:
    ta, tb = pq.read_table(a), pq.read_table(b)
    assert ta.column("id").to_pylist() == tb.column("id").to_pylist(), "ids differ"
    x, y = (np.array([v for v in t.column("embedding").to_pylist() if v is not None]) for t in (ta, tb))
    return float(np.abs(x - y).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="fortunes to embed")
    ap.add_argument("--model", type=Path, default=Path("/tmp/gpt2-small"))
    ap.add_argument("--layer", type=int, default=-1)
    ap.add_argument(
        "--cpus", type=int, default=2, help="CPUs for both engines (local: torch threads; Ray: 1-CPU actors)"
    )
    ap.add_argument("--repeats", type=int, default=1, help="runs per engine, alternated; the best is kept")
    ap.add_argument("--part-rows", type=int, default=128, help="rows per Ray task (the CLI default is 1,024)")
    args = ap.parse_args()

    import ray

    config = ExtractConfig(model=str(ensure_model(args.model)), layers=(args.layer,))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = write_input(tmp, args.n)

        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        init_s = ray_s = local_s = float("inf")
        # Alternate the engines and keep each one's best time: on a shared machine, load that comes and goes
        # would otherwise be booked to whichever engine ran during it.
        for _ in range(args.repeats):
            t = time.perf_counter()
            local = embed_file(
                source, tmp / "local.parquet", config, device="cpu", threads=args.cpus, progress=False, overwrite=True
            )
            local_s = min(local_s, time.perf_counter() - t)
            t = time.perf_counter()
            remote = embed_file_ray(
                source,
                tmp / "ray.parquet",
                config,
                device="cpu",
                workers=args.cpus,
                progress=False,
                part_rows=args.part_rows,
                overwrite=True,
            )
            ray_s = min(ray_s, time.perf_counter() - t)
        ray.shutdown()
        t = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        init_s = time.perf_counter() - t  # timed apart: the first init also pays one-off imports
        ray.shutdown()
        diff = max_difference(tmp / "local.parquet", tmp / "ray.parquet")
        local_tokens = int(sum(pq.read_table(tmp / "local.parquet", columns=["n_tokens"]).column(0).to_pylist()))

    rows, tokens = local.rows, local_tokens
    print(
        f"{rows} fortunes ({tokens:,} tokens), {Path(config.model).name} layer {args.layer}, {args.cpus} CPUs, "
        f"Ray parts of {args.part_rows} rows"
    )
    print(f"{'engine':<30}{'wall s':>8}{'rows/s':>8}{'tokens/s':>10}")
    for name, seconds in (
        (f"local (1 process, {args.cpus} threads)", local_s),
        (f"ray ({args.cpus} actors x 1 thread)", ray_s),
    ):
        print(f"{name:<30}{seconds:>8.1f}{rows / seconds:>8.1f}{tokens / seconds:>10,.0f}")
    print(
        f"ray.init: {init_s:.1f}s (once per process; not in the ray row). Ray pipeline (actor start, model load "
        f"per actor, parts): {remote.embed_seconds:.1f}s of the last ray run"
    )
    print(
        f"overhead: {ray_s - local_s:+.1f}s ({(ray_s / local_s - 1) * 100:+.0f}%) without ray.init, "
        f"{ray_s + init_s - local_s:+.1f}s with it; max |ray - local| = {diff:.2e}"
    )


if __name__ == "__main__":
    main()
