"""What the probe's single forward pass costs: every layer x 3 poolings vs the last layer alone (mean pooling).

The probe collects all hidden states of a batch in one pass; this prints the time of (a) extracting every layer
with mean, last and weighted-mean pooling and (b) extracting only the last layer with mean pooling, on the same
fortune texts with a GPT-2-shaped checkpoint (random weights: speed only), median of ``--repeats`` runs each.

Run:
    python -m embedkit.testing.checkpoint /tmp/gpt2-small   # once
    python benchmarks/probe_cost.py --model /tmp/gpt2-small [--n 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.corpus import load_fortunes  # noqa: E402
from embedkit import ExtractConfig, Extractor  # noqa: E402
from embedkit.probe import DEFAULT_POOLINGS, probe_config  # noqa: E402


def timed(extractor: Extractor, texts: list[str]) -> float:
    t0 = time.perf_counter()
    extractor.encode(texts)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="/tmp/gpt2-small")
    parser.add_argument("--n", type=int, default=256, help="fortune texts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    texts = [text for text, _ in load_fortunes(args.n, seed=0)]
    every = Extractor(
        probe_config(ExtractConfig(model=args.model, pooling=DEFAULT_POOLINGS), "all"),
        device="cpu",
        threads=args.threads,
    )
    last = Extractor(
        ExtractConfig(model=args.model, layers=(-1,), pooling=("mean",)), device="cpu", threads=args.threads
    )
    tokens = sum(min(len(ids), every.config.max_length) for ids in every.loaded.tokenizer(texts)["input_ids"])
    last.encode(texts[:8])  # warm-up: first-call allocations are not part of either figure
    every.encode(texts[:8])
    runs = {"every": [], "last": []}
    for _ in range(args.repeats):  # interleaved, so a busy machine slows both alike
        runs["last"].append(timed(last, texts))
        runs["every"].append(timed(every, texts))
    t_last, t_every = statistics.median(runs["last"]), statistics.median(runs["every"])
    n_columns = len(every.columns)
    print(
        f"{len(texts)} fortunes, {tokens:,} tokens, "
        f"{args.model} ({every.loaded.n_layers} blocks), median of {args.repeats}"
    )
    print(
        f"(a) probe pass, layers 0..{every.loaded.n_layers} x {len(DEFAULT_POOLINGS)} poolings = {n_columns} columns: "
        f"{t_every:7.2f} s"
    )
    print(f"(b) last layer, mean pooling, 1 column:{'':>{max(0, 22 - len(str(n_columns)))}}{t_last:7.2f} s")
    print(f"ratio (a)/(b): {t_every / t_last:.3f}")


if __name__ == "__main__":
    main()
