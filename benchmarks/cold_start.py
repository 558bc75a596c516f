"""Cold start (#23): what a one-query ``embedkit search`` costs beyond importing torch and the model's classes.

In one run, each in a fresh interpreter, interleaved (baseline, search, predict, baseline, ...), ``--runs`` times:

* **baseline**: ``python -c`` importing torch and the transformers classes the model needs (its model class and
  tokenizer classes, found from its config.json), nothing else;
* **baseline-frozen**: the same, but skipping CPython's final garbage collection at exit as the ``embedkit`` CLI
  does (``atexit.register(gc.freeze)``): that pass costs a torch process 0.6-1 s CPU, so search minus baseline
  alone credits embedkit with a saving any program importing torch could make. Search minus this one is what
  embedkit itself adds on top of the imports;
* **search**: ``python -m embedkit search INDEX "text"`` on a small index (``--rows`` fortunes, built first in a
  temporary directory with the same model);
* **predict**: ``embedkit predict MODEL_DIR features.parquet`` with a classifier trained on that features file
  (no model needed), reporting whether torch or transformers were imported.

Prints the medians, search minus baseline (the issue's target: <= 1 s), and the machine's load, since on a shared
machine every figure moves with it. The kernel-choice cache (``$EMBEDKIT_CACHE_DIR``) is a temporary directory, so
the runs do not depend on what this machine measured before.

Make the GPT-2-small-shaped checkpoint first:  python -m embedkit.testing.checkpoint /tmp/gpt2-small
Run:  .venv/bin/python benchmarks/cold_start.py --model /tmp/gpt2-small [--runs 5] [--rows 200]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from benchmarks.corpus import load_fortunes  # noqa: E402

BASELINE = """
import json, sys
config = json.load(open(sys.argv[1] + "/config.json"))
import torch, transformers
from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES
from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES
names = TOKENIZER_MAPPING_NAMES.get(config["model_type"])
names = [names] if isinstance(names, str) else list(names or ())
for name in [MODEL_MAPPING_NAMES[config["model_type"]], *names]:
    if name:
        getattr(transformers, name)
"""

BASELINE_FROZEN = BASELINE + "import atexit, gc\natexit.register(gc.freeze)\n"

# The CLI as `python -m embedkit` runs it, then one line saying which heavy modules the command imported.
CLI_WITH_REPORT = """
import json, sys
from embedkit.cli import cli
try:
    cli.main(args=sys.argv[1:], prog_name="embedkit")
except SystemExit as exc:
    code = exc.code
print("HEAVY " + json.dumps([m for m in ("torch", "transformers") if m in sys.modules]), file=sys.stderr)
sys.exit(code)
"""


def timed(cmd: list[str], env: dict, cwd: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run ``cmd``; its wall seconds, its CPU seconds (user + system: less moved by other jobs) and its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, cpu, done


def prepare(work: Path, model: str, rows: int, env: dict) -> tuple[Path, Path, Path]:
    """A features file of ``rows`` fortunes, an index of it and a classifier trained on it."""
    src = work / "fortunes.csv"
    with src.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        texts = [text for text, _ in load_fortunes(rows, seed=0)]
        median = statistics.median(len(t) for t in texts)
        # Two classes every split can stratify (a random draw of fortune files can leave a file with one row).
        writer.writerows([t, "long" if len(t) > median else "short"] for t in texts)
    features, index, classifier = work / "features.parquet", work / "index", work / "classifier"
    embedkit = [sys.executable, "-m", "embedkit"]
    steps = [
        ["embed", str(src), "-o", str(features), "--model", model, "--keep", "text,label", "--quiet"],
        ["index", "build", str(features), "-o", str(index), "--quiet"],
        ["train", str(features), "--label-column", "label", "-o", str(classifier), "--cv", "2"],
    ]
    for step in steps:
        timed(embedkit + step, env, work)
    return features, index, classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="model directory (python -m embedkit.testing.checkpoint DIR)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rows", type=int, default=200, help="fortunes in the index")
    parser.add_argument("--query", default="a fortune about money and luck")
    parser.add_argument("--target", type=float, default=1.0, help="seconds search may take beyond the baseline")
    parser.add_argument(
        "--source",
        type=Path,
        default=ROOT,
        help="the embedkit checkout whose CLI is timed (another one, e.g. an older commit, for a before/after)",
    )
    args = parser.parse_args()
    model = str(Path(args.model).resolve())

    with tempfile.TemporaryDirectory(prefix="embedkit-cold-start-") as tmp:
        work = Path(tmp)
        env = {
            **os.environ,
            "PYTHONPATH": str(args.source.resolve()),
            "EMBEDKIT_CACHE_DIR": str(work / "cache"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        features, index, classifier = prepare(work, model, args.rows, env)
        commands = {
            "baseline": [sys.executable, "-c", BASELINE, model],
            "baseline-frozen": [sys.executable, "-c", BASELINE_FROZEN, model],
            "search": [sys.executable, "-m", "embedkit", "search", str(index), args.query],
            "predict": [
                sys.executable,
                "-c",
                CLI_WITH_REPORT,
                "predict",
                str(classifier),
                str(features),
                "-o",
                str(work / "predictions.csv"),
                "--overwrite",
            ],
        }
        seconds: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        heavy: set[str] = set()
        loads = [os.getloadavg()[0]]
        for _ in range(args.runs):
            for name, cmd in commands.items():
                took, used, done = timed(cmd, env, work)
                seconds[name].append(took)
                cpu[name].append(used)
                for line in done.stderr.splitlines():
                    if line.startswith("HEAVY "):
                        heavy.update(json.loads(line.removeprefix("HEAVY ")))
            loads.append(os.getloadavg()[0])

    med = {name: statistics.median(values) for name, values in seconds.items()}
    med_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    # Each search run is paired with the baseline run just before it: the pair saw about the same load.
    paired = statistics.median(s - b for s, b in zip(seconds["search"], seconds["baseline"]))
    paired_cpu = statistics.median(s - b for s, b in zip(cpu["search"], cpu["baseline"]))
    frozen = statistics.median(s - b for s, b in zip(seconds["search"], seconds["baseline-frozen"]))
    frozen_cpu = statistics.median(s - b for s, b in zip(cpu["search"], cpu["baseline-frozen"]))
    print(f"embedkit at {args.source}; model {model}; {args.rows}-row index; {args.runs} runs each, interleaved")
    print(f"machine: {os.cpu_count()} CPUs, 1-min load average {min(loads):.1f}..{max(loads):.1f} during the runs")
    for name, values in seconds.items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        cpu_runs = ", ".join(f"{v:.2f}" for v in cpu[name])
        print(
            f"{name:15s} wall median {med[name]:6.2f} s (runs: {runs}); CPU median {med_cpu[name]:6.2f} s ({cpu_runs})"
        )
    print(
        f"search beyond the import baseline, median of paired runs: wall {paired:+.2f} s, CPU {paired_cpu:+.2f} s "
        f"(target <= {args.target:.1f} s)"
    )
    print(
        f"search beyond the baseline that also skips the final collection: wall {frozen:+.2f} s, "
        f"CPU {frozen_cpu:+.2f} s"
    )
    beyond = paired
    print(f"predict on a features file imported: {', '.join(sorted(heavy)) or 'neither torch nor transformers'}")
    if beyond > args.target or heavy:
        sys.exit(1)


if __name__ == "__main__":
    main()
