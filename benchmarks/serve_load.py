"""Load test of `embedkit serve` on loopback, side by side with offline embedding of the same texts.

Phases (every run, in this order, one process for the load generator and one for the server):

    offline     Extractor.embed on the texts in this process: the `embedkit embed` path (same settings)
    c=1/8/32    POST /v1/embeddings, one text per request, C requests in flight (async httpx), every text once
    search      (with --search-model) POST /v1/search by text, one query per request, concurrency 1, on an
                index of fortunes embedded with that model (real weights: the latency a user sees)
    soak        (with --soak N) N search requests at concurrency 32: errors counted; the server's RSS and
                private memory (RssAnon) read every --soak-every requests, and reported after --soak-warmup
                requests and at the end (the curve's shape tells a warm-up plateau from a leak)

Reported per phase: p50/p99 latency, requests/s, embeddings/s, and for c=32 the ratio to offline embeddings/s
(within the run; the median over runs is printed). The server's RSS is read from /proc at start and end.
Everything binds and sends to 127.0.0.1 only; each request has a timeout, and the number of requests is fixed.

Run:  .venv/bin/python benchmarks/serve_load.py --model /tmp/gpt2-small [--n 200] [--runs 3]
      [--search-model DIR --search-rows 2000] [--soak 10000] [--json results.json]
Make the model with: .venv/bin/python -m embedkit.testing.checkpoint /tmp/gpt2-small
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from benchmarks.corpus import load_fortunes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
REQUEST_TIMEOUT = 60.0
START_TIMEOUT = 600.0  # loading torch and a model took 150-175 s at load average 20 on 2 shared cores


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process in MB. ``RssAnon`` leaves out file-backed pages: the model weights are
    memory-mapped from safetensors, so VmRSS also counts whatever part of the file has been read (shared,
    reclaimable page cache) and grows as requests touch more of it, while private memory stays put."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (``/proc/PID/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """`python -m embedkit serve ...` in a subprocess on a free loopback port."""

    def __init__(self, args: list[str], threads: int | None) -> None:
        import httpx

        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        extra = ["--threads", str(threads)] if threads else []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "embedkit",
                "serve",
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--device",
                "cpu",
                "-q",
                *extra,
                *args,
            ],
            env=env,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start within {START_TIMEOUT:.0f} s")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)

    def rss(self) -> float:
        return rss_mb(self.proc.pid)

    def anon(self) -> float:
        return rss_mb(self.proc.pid, "RssAnon")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def load(url: str, path: str, bodies: list[dict], concurrency: int, every: int = 0, on_progress=None) -> dict:
    """Send every body once with ``concurrency`` requests in flight; latency of each, errors counted.

    With ``every`` and ``on_progress``, ``on_progress(done)`` is called each time another ``every`` requests
    have been answered (the soak reads the server's memory there, without pausing the load).
    """
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    queue = iter(bodies)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT, limits=limits) as client:

        async def worker():
            for body in queue:  # a shared iterator: each body is taken by exactly one worker
                started = time.perf_counter()
                try:
                    response = await client.post(path, json=body)
                    if response.status_code != 200:
                        errors.append(f"{response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                latencies.append(time.perf_counter() - started)
                if every and on_progress is not None and len(latencies) % every == 0:
                    on_progress(len(latencies))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "requests": len(bodies),
        "errors": len(errors),
        "first_errors": errors[:3],
        "seconds": wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "requests_per_s": len(bodies) / wall,
    }


def offline(extractor, texts: list[str]) -> dict:
    started, cpu = time.perf_counter(), time.process_time()
    extractor.embed(texts)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"seconds": wall, "embeddings_per_s": len(texts) / wall, "embeddings_per_cpu_s": len(texts) / cpu}


def build_search_index(model: str, texts: list[str], workdir: Path) -> Path:
    """An index of ``texts`` embedded with ``model`` (mean pooling, normalised: how MiniLM is meant to be used)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedkit import ExtractConfig
    from embedkit.embed import embed_file
    from embedkit.index import build_index

    index_dir = workdir / f"index-{len(texts)}"
    if (index_dir / "index.json").exists():
        return index_dir
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / f"fortunes-{len(texts)}.parquet"
    pq.write_table(pa.table({"text": texts}), source)
    features = workdir / f"features-{len(texts)}.parquet"
    config = ExtractConfig(model=model, layers=(-1,), pooling=("mean",), normalize=True)
    embed_file(source, features, config, keep=("text",), device="cpu", progress=False, overwrite=True)
    build_index(features, index_dir, kind="flat", overwrite=True)
    return index_dir


def run_once(args, texts: list[str], extractor, queries: list[str]) -> dict:
    result: dict = {}
    if args.concurrency:  # with --concurrency "" only the search phases run
        embedding_phases(args, texts, extractor, result)
    if args.search_model:
        search_phases(args, queries, result)
    return result


def embedding_phases(args, texts: list[str], extractor, result: dict) -> None:
    result["offline"] = offline(extractor, texts)
    server = Server(["--model", args.model], args.threads)
    try:
        result["rss_start_mb"], result["anon_start_mb"] = server.rss(), server.anon()
        asyncio.run(load(server.url, "/v1/embeddings", [{"input": t} for t in texts[:8]], 1))  # warm up
        for c in args.concurrency:
            cpu = cpu_seconds(server.proc.pid)
            stats = asyncio.run(load(server.url, "/v1/embeddings", [{"input": t} for t in texts], c))
            stats["embeddings_per_s"] = stats["requests_per_s"]  # one text per request
            stats["vs_offline"] = stats["embeddings_per_s"] / result["offline"]["embeddings_per_s"]
            # Per CPU-second of the server process (HTTP, JSON and batching included; the load generator's own
            # CPU left out): on a machine shared with other jobs, wall-clock ratios move with their load.
            stats["embeddings_per_cpu_s"] = len(texts) / (cpu_seconds(server.proc.pid) - cpu)
            stats["vs_offline_cpu"] = stats["embeddings_per_cpu_s"] / result["offline"]["embeddings_per_cpu_s"]
            result[f"c{c}"] = stats
            print(
                f"  c={c}: {stats['requests_per_s']:.1f} req/s, {stats['vs_offline']:.2f}x offline "
                f"({result['offline']['embeddings_per_s']:.1f}/s); per CPU-s {stats['embeddings_per_cpu_s']:.1f} = "
                f"{stats['vs_offline_cpu']:.2f}x offline; p50 {stats['p50_ms']:.0f} ms",
                flush=True,
            )
        result["rss_end_mb"], result["anon_end_mb"] = server.rss(), server.anon()
    finally:
        server.stop()


def search_phases(args, queries: list[str], result: dict) -> None:
    index_dir = build_search_index(args.search_model, args.search_texts, Path(args.workdir))
    server = Server(["--index", str(index_dir)], args.threads)
    try:
        bodies = [{"query": q, "k": 10} for q in queries]
        asyncio.run(load(server.url, "/v1/search", bodies[:10], 1))  # warm up
        result["search"] = asyncio.run(load(server.url, "/v1/search", bodies, 1))
        if args.soak:
            result["soak_rss_start_mb"], result["soak_anon_start_mb"] = server.rss(), server.anon()
            soak = [bodies[i % len(bodies)] for i in range(args.soak)]
            curve: list[tuple[int, float, float]] = [(0, result["soak_rss_start_mb"], result["soak_anon_start_mb"])]

            def sample(done: int) -> None:
                curve.append((done, server.rss(), server.anon()))

            result["soak"] = asyncio.run(load(server.url, "/v1/search", soak, 32, args.soak_every, sample))
            result["soak_rss_end_mb"], result["soak_anon_end_mb"] = server.rss(), server.anon()
            result["soak_curve"] = curve
    finally:
        server.stop()


def _joined(rows: list[dict], key: str, digits: int) -> str:
    """Per-run values of one figure, for the "(runs: ...)" part of a line."""
    return ", ".join(f"{row[key]:.{digits}f}" for row in rows)


def report(runs: list[dict], args) -> None:
    def med(values):
        return statistics.median(values)

    print(f"\n{len(runs)} run(s); {args.n} texts; model {args.model}")
    if "offline" in runs[0]:  # the embedding phases ran
        off = [r["offline"]["embeddings_per_s"] for r in runs]
        print(f"offline embed: {med(off):.1f} embeddings/s (runs: {', '.join(f'{v:.1f}' for v in off)})")
        for c in args.concurrency:
            rows = [r[f"c{c}"] for r in runs]
            print(
                f"c={c:<3} p50 {med([x['p50_ms'] for x in rows]):7.1f} ms"
                f"  p99 {med([x['p99_ms'] for x in rows]):7.1f} ms"
                f"  {med([x['requests_per_s'] for x in rows]):6.1f} req/s = emb/s"
                f"  vs offline {med([x['vs_offline'] for x in rows]):.2f}x (runs: "
                f"{_joined(rows, 'vs_offline', 2)})  errors {sum(x['errors'] for x in rows)}"
            )
            print(
                f"      per CPU-second: {med([x['embeddings_per_cpu_s'] for x in rows]):.1f} emb/CPU-s vs offline "
                f"{med([r['offline']['embeddings_per_cpu_s'] for r in runs]):.1f}: "
                f"{med([x['vs_offline_cpu'] for x in rows]):.2f}x (runs: "
                f"{_joined(rows, 'vs_offline_cpu', 2)})"
            )
        print(
            f"server RSS: start {med([r['rss_start_mb'] for r in runs]):.0f} MB, "
            f"end {med([r['rss_end_mb'] for r in runs]):.0f} MB; private (RssAnon) start "
            f"{med([r['anon_start_mb'] for r in runs]):.0f} MB, end {med([r['anon_end_mb'] for r in runs]):.0f} MB"
        )
    if "search" in runs[0]:
        rows = [r["search"] for r in runs]
        print(
            f"search by text (c=1, {args.search_model}): p50 {med([x['p50_ms'] for x in rows]):.1f} ms, "
            f"p99 {med([x['p99_ms'] for x in rows]):.1f} ms (runs: {_joined(rows, 'p50_ms', 1)})"
        )
    for r in runs:
        if "soak" in r:
            s = r["soak"]
            print(
                f"soak: {s['requests']} search requests at c=32 in {s['seconds']:.1f} s ({s['requests_per_s']:.0f}"
                f" req/s), {s['errors']} errors, p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms; RSS "
                f"{r['soak_rss_start_mb']:.0f} -> {r['soak_rss_end_mb']:.0f} MB "
                f"({r['soak_rss_end_mb'] - r['soak_rss_start_mb']:+.0f} MB); private "
                f"{r['soak_anon_start_mb']:.0f} -> {r['soak_anon_end_mb']:.0f} MB "
                f"({r['soak_anon_end_mb'] - r['soak_anon_start_mb']:+.0f} MB)"
            )
            if s["first_errors"]:
                print("  first errors:", s["first_errors"])
            curve = r["soak_curve"]
            print("  requests:   " + " ".join(f"{n:>6}" for n, _, _ in curve))
            print("  RSS MB:     " + " ".join(f"{rss:>6.0f}" for _, rss, _ in curve))
            print("  private MB: " + " ".join(f"{anon:>6.0f}" for _, _, anon in curve))
            warm = [row for row in curve if row[0] >= args.soak_warmup]
            if warm and args.soak_warmup:
                done, rss, anon = warm[0]
                tail = [a for n, _, a in curve if n >= done] + [r["soak_anon_end_mb"]]
                print(
                    f"  after a {done:,}-request warm-up: RSS {rss:.0f} -> {r['soak_rss_end_mb']:.0f} MB "
                    f"({r['soak_rss_end_mb'] - rss:+.0f} MB), private {anon:.0f} -> {r['soak_anon_end_mb']:.0f} MB "
                    f"({r['soak_anon_end_mb'] - anon:+.0f} MB; range {min(tail):.0f}-{max(tail):.0f} MB)"
                )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="model for the embeddings phases (e.g. /tmp/gpt2-small)")
    parser.add_argument("--n", type=int, default=200, help="texts (one request each) per concurrency level")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads, offline and in the server")
    parser.add_argument("--search-model", default=None, help="model with real weights for the search phase")
    parser.add_argument("--search-rows", type=int, default=2000, help="fortunes in the search index")
    parser.add_argument("--soak", type=int, default=0, help="search requests in the soak phase (last run only)")
    parser.add_argument("--soak-every", type=int, default=1000, help="read the server's memory every N soak requests")
    parser.add_argument(
        "--soak-warmup", type=int, default=2000, help="soak requests before memory is expected to stay flat"
    )
    parser.add_argument("--workdir", default="/tmp/embedkit-serve-bench", help="where the search index is cached")
    parser.add_argument("--json", default=None, help="write every run's figures here")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]

    import torch

    from embedkit import ExtractConfig, Extractor

    if args.threads:
        torch.set_num_threads(args.threads)
    texts = [t for t, _ in load_fortunes(args.n, seed=0)]
    pool = load_fortunes(args.search_rows + 200, seed=1)
    args.search_texts = [t for t, _ in pool[: args.search_rows]]
    queries = [t.split("\n")[0][:200] for t, _ in pool[args.search_rows :]]  # unseen fortunes' first lines
    extractor = None
    if args.concurrency:
        extractor = Extractor(ExtractConfig(model=args.model, layers=(-1,), pooling=("mean",)), device="cpu")
        extractor.embed(texts[:8])  # warm up
    runs = []
    soak = args.soak
    for i in range(args.runs):
        args.soak = soak if i == args.runs - 1 else 0
        runs.append(run_once(args, texts, extractor, queries))
        print(
            f"run {i + 1}: "
            + json.dumps(
                {
                    k: (round(v, 2) if isinstance(v, float) else v)
                    for k, v in runs[-1].items()
                    if not isinstance(v, dict)
                }
            ),
            flush=True,
        )
    args.soak = soak
    report(runs, args)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))
    failed = sum(r[f"c{c}"]["errors"] for r in runs for c in args.concurrency) + sum(
        r.get("soak", {}).get("errors", 0) + r.get("search", {}).get("errors", 0) for r in runs
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
