"""Peak memory of ``embedkit.embed.embed_file`` must not grow with the number of rows.

Writes a CSV of N and of 10N fortune texts (cycled when N exceeds the fortunes), embeds each in its own fresh
subprocess (so one run's allocations cannot hide the other's) and prints each run's peak RSS (``ru_maxrss``)
and the difference. The claim checked: 10x the rows adds less than ``--limit-mb`` (100 MB), and the script
exits 1 when it does not.

Speed is not the point here, so the default runs the full-size model only to ``--layer 1``: every stage
(reading, tokenising, batching, the forward pass, Parquet parts) runs as usual, at a fraction of the time.

Run:  .venv/bin/python benchmarks/memory.py --model /tmp/gpt2-small [--n 1000] [--layer 1]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from benchmarks.corpus import load_fortunes  # noqa: E402

CHILD = """
import json, resource, sys, time
from embedkit import ExtractConfig
from embedkit.embed import embed_file
src, out, model, layer, batch_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
start = time.perf_counter()
summary = embed_file(src, out, ExtractConfig(model=model, layers=(layer,)), text_column="text", device="cpu",
                     batch_tokens=int(batch_tokens) or None, progress=False)
print(json.dumps({"rows": summary.rows, "seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_corpus(path: Path, rows: int) -> None:
    texts = [t for t, _ in load_fortunes()]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text"])
        for text in itertools.islice(itertools.cycle(texts), rows):
            writer.writerow([text])


def measure(src: Path, out: Path, args) -> dict:
    """Embed ``src`` in a fresh interpreter and return its summary and peak RSS."""
    cmd = [sys.executable, "-c", CHILD, str(src), str(out), args.model, str(args.layer), str(args.batch_tokens or 0)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"embedding {src.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.environ.get("EMBEDKIT_MODEL", "/tmp/gpt2-small"))
    ap.add_argument("--n", type=int, default=1000, help="rows of the small run (the large one has 10x)")
    ap.add_argument("--layer", type=int, default=1)
    ap.add_argument("--batch-tokens", type=int, default=None)
    ap.add_argument("--limit-mb", type=float, default=100.0)
    args = ap.parse_args(argv)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rows in (args.n, 10 * args.n):
            src = Path(tmp) / f"rows{rows}.csv"
            write_corpus(src, rows)
            started = time.perf_counter()
            results[rows] = measure(src, Path(tmp) / f"rows{rows}.parquet", args)
            r = results[rows]
            print(f"{r['rows']:>7} rows: peak RSS {r['peak_rss_mb']:7.1f} MB  "
                  f"({r['seconds']:.0f} s embedding, {time.perf_counter() - started:.0f} s with start-up)", flush=True)
    growth = results[10 * args.n]["peak_rss_mb"] - results[args.n]["peak_rss_mb"]
    ok = growth < args.limit_mb
    print(f"10x the rows adds {growth:+.1f} MB of peak RSS (limit {args.limit_mb:.0f} MB): {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
