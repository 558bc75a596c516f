"""Does `embedkit index build` report the recall that new text queries get? (issue #16)

For each real labelled set (benchmarks/labelled_sets.py: fortunes, man-page summaries, docstrings; MiniLM,
mean pooling, normalised), 200 rows drawn with a fixed seed are held out: the index is built from the other
rows only, then the 200 held-out TEXTS are embedded by the index (``Index.embed``, the stored settings) and
searched as new queries. Their recall@10 against exact search (``search(exact=True)``) is the measured recall;
the build's own report (recall@10 and its 95% interval, tuned at the default target 0.95) is the reported one.
Each set is built with ``--kind auto`` and with hnsw and ivf forced, so the approximate path is exercised on a
few thousand rows. The sets hold no duplicate texts (labelled_sets deduplicates), so no query is a copy of an
indexed row. Exit 1 unless, everywhere, |reported - measured| <= 0.01 and measured >= 0.95.

Run: python benchmarks/index_new_queries.py [--sets ...] [--kinds auto hnsw ivf] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import labelled_sets  # noqa: E402

HELD_OUT = 200
TOLERANCE = 0.01


def split_features(features: Path, out: Path, seed: int) -> tuple[Path, list[str]]:
    """The features file without HELD_OUT random rows (its metadata kept), and those rows' texts."""
    table = pq.read_table(features)
    held = np.zeros(table.num_rows, dtype=bool)
    held[np.random.default_rng(seed).choice(table.num_rows, HELD_OUT, replace=False)] = True

    pq.write_table(table.filter(pa.array(~held)), out)
    import csv

    with features.with_suffix(".csv").open(newline="", encoding="utf-8") as f:  # the texts labelled_sets embedded
        text_of = {row["id"]: row["text"] for row in csv.DictReader(f)}
    return out, [text_of[str(i)] for i in table.filter(pa.array(held)).column("id").to_pylist()]


def main() -> int:
    from embedkit.index import DEFAULT_TARGET_RECALL, Index, build_index

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(labelled_sets.SETS), choices=labelled_sets.SETS)
    parser.add_argument("--kinds", nargs="+", default=["auto", "hnsw", "ivf"])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "embedkit-bench")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    ok = True
    print(f"target recall@10 {DEFAULT_TARGET_RECALL}, {HELD_OUT} held-out texts per set as new queries")
    print("| set | indexed rows | kind | params | reported recall@10 (95% CI) | measured recall@10 | diff |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets:
            features = labelled_sets.embed(name, args.workdir, seed=args.seed)
            indexed, texts = split_features(features, Path(tmp) / f"{name}.parquet", args.seed)
            vectors = None
            for kind in args.kinds:
                out = Path(tmp) / f"{name}-{kind}"
                report = build_index(indexed, out, kind=kind, seed=args.seed)
                index = Index.load(out)
                if vectors is None:
                    vectors = index.embed(texts)  # the texts embedded as search embeds a query
                found = index.search_vectors(vectors, 10).positions
                exact = index.search_vectors(vectors, 10, exact=True).positions
                measured = float(np.mean([np.intersect1d(f, e).size / 10 for f, e in zip(found, exact)]))
                low, high = report.recall_interval
                diff = report.recall_at_10 - measured
                ok &= abs(diff) <= TOLERANCE and measured >= DEFAULT_TARGET_RECALL
                params = ", ".join(f"{k}={v}" for k, v in report.params.items()) or "exact"
                print(
                    f"| {name} | {report.rows} | {report.kind} | {params} | {report.recall_at_10:.3f} "
                    f"({low:.3f}-{high:.3f}) | {measured:.3f} | {diff:+.3f} |",
                    flush=True,
                )
    print(f"{'PASS' if ok else 'FAIL'}: |reported - measured| <= {TOLERANCE} and measured >= {DEFAULT_TARGET_RECALL}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
