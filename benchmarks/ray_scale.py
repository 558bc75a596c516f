"""Does `embedkit embed --engine ray` scale with its workers while the driver carries no data? Figures side by side.

Every run is a fresh child process (its own Ray instance with ``--cpus`` CPUs, or the local engine), which
reports its own peak RSS (``ru_maxrss``), its ``/proc/self/io`` counters and its wall time:

1. driver peak RSS at 1x and 10x rows (target: growth < 50 MB);
2. bytes the driver process read and wrote (``rchar``/``wchar``: every read/write call, page cache or not;
   ``read_bytes``/``write_bytes``: what reached the disk) against input + output bytes (target < 5%);
3. 2 single-thread actors against 1 on the same input (target >= 1.7x);
4. the Ray engine with 1 single-thread actor against the local engine with 1 thread (target overhead <= 15%);
5. reading on the workers: the read tasks' time in all (time the model actors no longer spend reading) and how
   much of the reading ran while the actors were embedding (Ray Data's operator stats: the read operator's span
   against the model operator's).

1 and 2 measure the driver, whatever the model costs, so they use a narrow GPT-2 (same tokenizer, 2 blocks,
64 wide; built on first use) to reach 10x rows in seconds; 3 and 4 measure the model work and use
``--model`` (default /tmp/gpt2-small, GPT-2-small-shaped with random weights: speed only). Wall times include
starting Ray and the actors' model loads, which a longer job amortises. The machine's load average is printed:
on a shared 2-core machine the speed figures are only as good as the cores were free.

    python benchmarks/ray_scale.py [--rows 2000] [--speed-rows 48] [--model /tmp/gpt2-small] [--cpus 2]

Results: benchmarks/RESULTS.md, "Ray engine at scale" (and docs/ray.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

IO_KEYS = ("rchar", "wchar", "read_bytes", "write_bytes")


def proc_io() -> dict[str, int]:
    with open("/proc/self/io") as f:
        fields = dict(line.split(": ") for line in f.read().splitlines())
    return {k: int(fields[k]) for k in IO_KEYS}


def child(args: argparse.Namespace) -> None:
    """One embed run in this process; prints its figures as JSON."""
    from embedkit import ExtractConfig
    from embedkit.dataset import DatasetWriter
    from embedkit.embed import embed
    from embedkit.engines import LocalEngine
    from embedkit.parts import PartWriter
    from embedkit.spec import InputSpec, Runtime

    # When each part/shard is recorded: the steady rate, once Ray and the models have started, is measured between
    # the first and the last record (the same for both engines).
    stamps: list[tuple[float, int]] = []
    for cls, name in ((DatasetWriter, "record"), (PartWriter, "commit")):
        original = getattr(cls, name)

        def stamped(self, first, *rest, _original=original):
            rows = first["rows"] if isinstance(first, dict) else first.num_rows
            _original(self, first, *rest)
            stamps.append((time.perf_counter(), rows))

        setattr(cls, name, stamped)
    # The driver's I/O inside DatasetWriter.finish (it verifies every shard's sha256) apart from the rest.
    finish_io: dict[str, int] = dict.fromkeys(IO_KEYS, 0)
    original_finish = DatasetWriter.finish

    def measured_finish(self, meta, **kwargs):
        before = proc_io()
        try:
            return original_finish(self, meta, **kwargs)
        finally:
            after = proc_io()
            finish_io.update({k: after[k] - before[k] for k in IO_KEYS})

    DatasetWriter.finish = measured_finish  # type: ignore[method-assign]
    reading: dict[str, float] = {}
    if args.engine == "ray":
        import embedkit.engines.ray as ray_engine

        original_rows = ray_engine._rows

        def rows_then_stats(ray, results):
            yield from original_rows(ray, results)
            reading.update(read_overlap(results))

        ray_engine._rows = rows_then_stats  # type: ignore[assignment]
    io0, t0 = proc_io(), time.perf_counter()
    config = ExtractConfig(model=args.model, max_length=args.max_length)
    runtime = Runtime(device="cpu", threads=args.threads, progress=False)
    if args.engine == "ray":
        import ray

        from embedkit.engines.ray import RayEngine

        ray.init(
            address="local", num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False
        )
        engine = RayEngine(workers=args.workers)
    else:
        engine = LocalEngine()
    summary = embed(InputSpec(args.input), args.output, config, runtime, engine=engine, part_rows=args.part_rows)
    seconds = time.perf_counter() - t0
    io1 = proc_io()
    steady = (sum(r for _, r in stamps[1:]) / (stamps[-1][0] - stamps[0][0])) if len(stamps) > 2 else float("nan")
    out = Path(args.output)
    out_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if out.is_dir() else out.stat().st_size
    print(
        json.dumps(
            {
                "seconds": seconds,
                "steady_rows_per_s": steady,
                "rows": summary.rows,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "io": {k: io1[k] - io0[k] for k in IO_KEYS},
                "finish_io": finish_io,
                "reading": reading,
                "input_bytes": Path(args.input).stat().st_size,
                "output_bytes": out_bytes,
            }
        )
    )


def read_overlap(results) -> dict[str, float]:
    """From Ray Data's stats of the pipeline: the read tasks' summed wall time and the share of the reading span
    (first read start to last read end) that fell inside the model actors' span (first to last embed)."""
    spans: dict[str, tuple[float, float, float]] = {}
    pending = [results._get_stats_summary()]  # private, but the only structured form of Ray Data's stats
    while pending:
        summary = pending.pop()
        pending.extend(summary.parents)
        for op in summary.operators_stats:
            if op.earliest_start_time is not None and op.latest_end_time is not None:
                total = op.wall_time.sum if op.wall_time is not None else float("nan")
                spans[op.operator_name] = (op.earliest_start_time, op.latest_end_time, total)
    read = next((v for k, v in spans.items() if "EmbedkitShards" in k), None)
    embed = next((v for k, v in spans.items() if "ShardEmbedder" in k), None)
    if read is None or embed is None:
        return {}
    inside = max(0.0, min(read[1], embed[1]) - max(read[0], embed[0]))
    return {
        "read_task_seconds": read[2],
        "read_span_s": read[1] - read[0],
        "embed_task_seconds": embed[2],
        "embed_span_s": embed[1] - embed[0],
        "overlap": inside / (read[1] - read[0]) if read[1] > read[0] else float("nan"),
    }


def run(script_args: list[str], **options) -> dict:
    cmd = [sys.executable, __file__, "--child", *script_args]
    for key, value in options.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"child failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_input(path: Path, n: int) -> Path:
    from benchmarks.corpus import load_fortunes

    fortunes = load_fortunes(None)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "category"])
        writer.writerows(fortunes[i % len(fortunes)] for i in range(n))
    return path


def ensure_model(path: Path, *extra: str) -> Path:
    if not (path / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "embedkit.testing.checkpoint", str(path), *extra], check=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2000, help="1x rows of the driver runs (10x is ten times that)")
    ap.add_argument("--speed-rows", type=int, default=48, help="rows of the speed runs (--model)")
    ap.add_argument("--model", default="/tmp/gpt2-small")
    ap.add_argument("--narrow-model", default="/tmp/gpt2-narrow-l2-w64")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=64, help="tokens per text (fortunes are short anyway)")
    # child-only options
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--engine", default="ray", help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--part-rows", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    narrow = ensure_model(Path(args.narrow_model), "--layers", "2", "--width", "64", "--heads", "2")
    model = ensure_model(Path(args.model))
    load_before = os.getloadavg()
    common = ["--cpus", str(args.cpus), "--max-length", str(args.max_length)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        small, large = write_input(root / "1x.csv", args.rows), write_input(root / "10x.csv", 10 * args.rows)
        speed = write_input(root / "speed.csv", args.speed_rows)
        print(f"load average before: {load_before[0]:.1f} (1 min) on {os.cpu_count()} cores", flush=True)

        driver = {}
        for name, path in (("1x", small), ("10x", large)):
            driver[name] = run(
                common, model=narrow, input=path, output=root / f"d{name}", workers=2, part_rows=max(1, args.rows // 8)
            )
        speed_runs = {
            "local, 1 thread": run(
                common,
                engine="local",
                model=model,
                input=speed,
                output=root / "l1.parquet",
                part_rows=max(1, args.speed_rows // 8),
            ),
            "ray, 1 actor x 1 thread": run(
                common, model=model, input=speed, output=root / "r1", workers=1, part_rows=max(1, args.speed_rows // 8)
            ),
            "ray, 2 actors x 1 thread": run(
                common, model=model, input=speed, output=root / "r2", workers=2, part_rows=max(1, args.speed_rows // 8)
            ),
        }
    load_after = os.getloadavg()

    print(f"\n## driver ({narrow.name}, 2 actors, shards of {max(1, args.rows // 8)} rows)")
    print(f"{'rows':>8} {'peak RSS MB':>12} {'rchar':>10} {'wchar':>10} {'read_b':>10} {'write_b':>10} {'in+out':>10}")
    for r in driver.values():
        io, total = r["io"], r["input_bytes"] + r["output_bytes"]
        print(
            f"{r['rows']:>8} {r['peak_rss_mb']:>12.0f} "
            + " ".join(f"{io[k] / total:>9.1%}" for k in IO_KEYS)
            + f" {total / 1e6:>8.1f}MB"
        )
    one, ten = driver["1x"], driver["10x"]
    data = (ten["input_bytes"] + ten["output_bytes"]) - (one["input_bytes"] + one["output_bytes"])
    print(
        "marginal driver bytes per byte of input+output, 1x -> 10x: "
        + ", ".join(f"{k} {(ten['io'][k] - one['io'][k]) / data:.1%}" for k in IO_KEYS)
        + " (target < 5%; the rest is fixed: imports, Ray's start)"
    )
    print(
        "  of which inside DatasetWriter.finish (sha256 of every shard): "
        + ", ".join(f"{k} {(ten['finish_io'][k] - one['finish_io'][k]) / data:.1%}" for k in IO_KEYS)
    )
    growth = driver["10x"]["peak_rss_mb"] - driver["1x"]["peak_rss_mb"]
    print(f"RSS growth 1x -> 10x: {growth:+.0f} MB (target < 50 MB)")

    print(f"\n## speed ({model.name}, {args.speed_rows} rows, --cpus {args.cpus}; wall time incl. startup)")
    for name, r in speed_runs.items():
        print(
            f"{name:<28} {r['seconds']:>7.1f} s  {r['rows'] / r['seconds']:>6.2f} rows/s overall, "
            f"{r['steady_rows_per_s']:>6.2f} rows/s steady (first to last shard)"
        )
    for name, r in [*((f"driver {k}", v) for k, v in driver.items()), *speed_runs.items()]:
        g = r.get("reading") or {}
        if g:
            print(
                f"reading ({name}): read tasks {g['read_task_seconds']:.1f} s in all over a {g['read_span_s']:.1f} s "
                f"span, {g['overlap']:.0%} of it inside the {g['embed_span_s']:.1f} s the actors embedded "
                f"({g['embed_task_seconds']:.1f} s of actor calls)"
            )
    runs = [speed_runs[k] for k in ("local, 1 thread", "ray, 1 actor x 1 thread", "ray, 2 actors x 1 thread")]
    for label, key, better in (("wall time", "seconds", min), ("steady rate", "steady_rows_per_s", max)):
        local, r1, r2 = (r[key] for r in runs)
        speedup = r1 / r2 if better is min else r2 / r1
        overhead = r1 / local - 1 if better is min else local / r1 - 1
        print(f"{label}: 2 actors vs 1 {speedup:.2f}x (target >= 1.7x); ray 1 actor vs local 1 thread {overhead:+.0%}")
    print(f"load average after: {load_after[0]:.1f} (1 min); {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
