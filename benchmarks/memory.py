"""Peak memory of ``embedkit.embed.embed_file`` must not grow with the number of rows.

Writes a CSV of N fortune texts and one of the same N texts repeated 10 times (so both runs meet the same
longest text: the peak of one forward pass depends on it, not on the row count), embeds each in its own fresh
subprocess (so one run's allocations cannot hide the other's) and prints each run's peak RSS (``ru_maxrss``)
and the difference.

``embed_file`` holds one part (``part_rows`` rows) in memory at a time, so memory is bounded by the part size,
not the dataset. For both runs to be in that steady state, N must span several parts: the default uses
``--part-rows 250`` with N = 1,000 (4 and 40 parts). With the library default of 4,096 rows per part the
bound is the same idea at a larger constant. The claim checked: 10x the rows adds less than ``--limit-mb``
(100 MB), and the script exits 1 when it does not.

Speed is not the point here, so the default runs the full-size model only to ``--layer 1``: every stage
(reading, tokenising, batching, the forward pass, Parquet parts) runs as usual, at a fraction of the time.

Run:  .venv/bin/python benchmarks/memory.py --model /tmp/gpt2-small [--n 1000] [--layer 1] [--part-rows 250]
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
src, out, model, layer, batch_tokens, part_rows = sys.argv[1:7]
layer = int(layer)
start = time.perf_counter()
summary = embed_file(src, out, ExtractConfig(model=model, layers=(layer,)), text_column="text", device="cpu",
                     batch_tokens=int(batch_tokens) or None, part_rows=int(part_rows), progress=False)
print(json.dumps({"rows": summary.rows, "seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_corpus(path: Path, texts: list[str], repeats: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text"])
        for text in itertools.chain.from_iterable(itertools.repeat(texts, repeats)):
            writer.writerow([text])


def measure(src: Path, out: Path, args) -> dict:
    """Embed ``src`` in a fresh interpreter and return its summary and peak RSS."""
    cmd = [
        sys.executable,
        "-c",
        CHILD,
        str(src),
        str(out),
        args.model,
        str(args.layer),
        str(args.batch_tokens or 0),
        str(args.part_rows),
    ]
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
    ap.add_argument("--part-rows", type=int, default=250, help="rows per Parquet part (the streaming window)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit-mb", type=float, default=100.0)
    args = ap.parse_args(argv)

    texts = [t for t, _ in load_fortunes(args.n, seed=args.seed)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeats in (1, 10):
            rows = repeats * len(texts)
            src = Path(tmp) / f"rows{rows}.csv"
            write_corpus(src, texts, repeats)
            started = time.perf_counter()
            results[rows] = measure(src, Path(tmp) / f"rows{rows}.parquet", args)
            r = results[rows]
            print(
                f"{r['rows']:>7} rows: peak RSS {r['peak_rss_mb']:7.1f} MB  "
                f"({r['seconds']:.0f} s embedding, {time.perf_counter() - started:.0f} s with start-up)",
                flush=True,
            )
    growth = results[10 * len(texts)]["peak_rss_mb"] - results[len(texts)]["peak_rss_mb"]
    ok = growth < args.limit_mb
    print(f"10x the rows adds {growth:+.1f} MB of peak RSS (limit {args.limit_mb:.0f} MB): {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
