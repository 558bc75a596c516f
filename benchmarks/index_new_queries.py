"""Does `embedkit index build` report the recall that new text queries get? (issue #16)

For each real labelled set (benchmarks/labelled_sets.py: fortunes, man-page summaries, docstrings; MiniLM,
mean pooling, normalised), the rows are cut into ``--folds`` disjoint held-out parts of ``--held-out`` rows
(a fixed-seed permutation). For each fold the index is built from the other rows only (build seed = seed +
fold, so the build's own held-out sample differs too), then that fold's TEXTS are embedded by the index
(``Index.embed``, the stored settings) and searched as new queries. Their recall@10 against exact search
(``search(exact=True)``) is the measured recall; the build's own report (recall@10 and its 95% interval, tuned
at the default target 0.95) is the reported one.

Both sides are samples, and small ones: the build holds out at most 10% of the rows (99 queries on a 1,000-row
set) and one fold measures 200 queries, so one build's reported-vs-measured gap carries about +/-0.01-0.02 of
noise from each side. Pooling the folds gives folds x held-out new queries (measured) and folds x the build's
held-out queries (reported), each with a 95% interval:

- measured: the Wilson interval of all folds' per-query hits together (``embedkit.index.wilson_interval``, the
  method the build uses, which widens for hits correlated within a query);
- reported: the folds' estimates averaged, weighted by their held-out query counts; its interval combines each
  build's interval as a normal standard error ((high - low) / 2z), so it is an approximation;
- the gap's interval combines the two standard errors.

Each set is built with ``--kind auto`` and with hnsw and ivf forced, so the approximate path is exercised on a
few thousand rows. The sets hold no duplicate texts (labelled_sets deduplicates), so no query is a copy of an
indexed row. Exit 1 unless, on the pooled figures, everywhere |reported - measured| <= 0.01 and measured >= 0.95.

Run: python benchmarks/index_new_queries.py [--sets ...] [--kinds auto hnsw ivf] [--folds 5] [--held-out 200]
     [--workdir DIR]
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import labelled_sets  # noqa: E402

TOLERANCE = 0.01
Z = 1.96  # 95%, two-sided, as the build's interval


def fold_masks(rows: int, folds: int, held_out: int, seed: int) -> list[np.ndarray]:
    """``folds`` disjoint boolean masks of ``held_out`` rows each (a fixed-seed permutation cut in parts)."""
    if folds * held_out >= rows:
        raise SystemExit(f"{folds} folds x {held_out} held-out rows leave nothing to index in {rows} rows")
    order = np.random.default_rng(seed).permutation(rows)
    masks = []
    for f in range(folds):
        mask = np.zeros(rows, dtype=bool)
        mask[order[f * held_out : (f + 1) * held_out]] = True
        masks.append(mask)
    return masks


def texts_by_id(features: Path) -> dict[str, str]:
    with features.with_suffix(".csv").open(newline="", encoding="utf-8") as f:  # the texts labelled_sets embedded
        return {row["id"]: row["text"] for row in csv.DictReader(f)}


@dataclass
class Pooled:
    """One (set, kind) over its folds."""

    reported: list[tuple[float, float, float, int]] = field(default_factory=list)  # recall, low, high, queries
    hits: list[np.ndarray] = field(default_factory=list)  # per new query, out of 10
    params: set[str] = field(default_factory=set)
    kinds: set[str] = field(default_factory=set)
    rows: set[int] = field(default_factory=set)

    def reported_interval(self) -> tuple[float, float, float, int]:
        weights = np.array([q for *_, q in self.reported], dtype=np.float64)
        values = np.array([r for r, *_ in self.reported])
        ses = np.array([(high - low) / (2 * Z) for _, low, high, _ in self.reported])
        mean = float((weights * values).sum() / weights.sum())
        se = float(math.sqrt(((weights * ses) ** 2).sum()) / weights.sum())
        return mean, max(0.0, mean - Z * se), min(1.0, mean + Z * se), int(weights.sum())


def main() -> int:
    from embedkit.index import DEFAULT_TARGET_RECALL, Index, build_index, wilson_interval

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(labelled_sets.SETS), choices=labelled_sets.SETS)
    parser.add_argument("--kinds", nargs="+", default=["auto", "hnsw", "ivf"])
    parser.add_argument("--folds", type=int, default=5, help="disjoint held-out parts, one index build each")
    parser.add_argument("--held-out", type=int, default=200, help="texts per fold searched as new queries")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "embedkit-bench")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(
        f"target recall@10 {DEFAULT_TARGET_RECALL}; {args.folds} folds x {args.held_out} held-out texts per set "
        "as new queries\n"
    )
    print("Per fold:\n")
    print("| set | fold | indexed rows | kind | params | reported recall@10 (95% CI), n | measured (95% CI) | diff |")
    print("|---|---|---|---|---|---|---|---|")
    pooled: dict[tuple[str, str], Pooled] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets:
            features = labelled_sets.embed(name, args.workdir, seed=args.seed)
            table = pq.read_table(features)
            text_of = texts_by_id(features)
            for fold, held in enumerate(fold_masks(table.num_rows, args.folds, args.held_out, args.seed)):
                indexed = Path(tmp) / f"{name}-{fold}.parquet"
                pq.write_table(table.filter(pa.array(~held)), indexed)
                texts = [text_of[str(i)] for i in table.filter(pa.array(held)).column("id").to_pylist()]
                vectors = None
                for kind in args.kinds:
                    out = Path(tmp) / f"{name}-{fold}-{kind}"
                    report = build_index(indexed, out, kind=kind, seed=args.seed + fold)
                    index = Index.load(out)
                    if vectors is None:
                        vectors = index.embed(texts)  # the texts embedded as search embeds a query
                    found = index.search_vectors(vectors, 10).positions
                    exact = index.search_vectors(vectors, 10, exact=True).positions
                    hits = np.array([np.intersect1d(f, e).size for f, e in zip(found, exact)])
                    measured, m_low, m_high = wilson_interval(hits, 10)
                    low, high = report.recall_interval or (report.recall_at_10, report.recall_at_10)
                    params = ", ".join(f"{k}={v}" for k, v in report.params.items()) or "exact"
                    p = pooled.setdefault((name, kind), Pooled())
                    p.reported.append((report.recall_at_10, low, high, report.eval_queries))
                    p.hits.append(hits)
                    p.params.add(params)
                    p.kinds.add(report.kind)
                    p.rows.add(report.rows)
                    print(
                        f"| {name} | {fold} | {report.rows} | {kind} -> {report.kind} | {params} | "
                        f"{report.recall_at_10:.3f} ({low:.3f}-{high:.3f}), {report.eval_queries} | "
                        f"{measured:.3f} ({m_low:.3f}-{m_high:.3f}) | {report.recall_at_10 - measured:+.3f} |",
                        flush=True,
                    )

    ok = True
    print(f"\nPooled over {args.folds} folds:\n")
    print(
        "| set | indexed rows | kind | params | reported recall@10 (95% CI), queries | measured (95% CI), queries "
        "| diff (95% CI) |"
    )
    print("|---|---|---|---|---|---|---|")
    for (name, kind), p in pooled.items():
        rep, r_low, r_high, r_queries = p.reported_interval()
        hits = np.concatenate(p.hits)
        measured, m_low, m_high = wilson_interval(hits, 10)
        se_diff = math.hypot((r_high - r_low) / (2 * Z), (m_high - m_low) / (2 * Z))
        diff = rep - measured
        ok &= abs(diff) <= TOLERANCE and measured >= DEFAULT_TARGET_RECALL
        rows = f"{min(p.rows)}" if len(p.rows) == 1 else f"{min(p.rows)}-{max(p.rows)}"
        print(
            f"| {name} | {rows} | {kind} -> {'/'.join(sorted(p.kinds))} | {'; '.join(sorted(p.params))} | "
            f"{rep:.3f} ({r_low:.3f}-{r_high:.3f}), {r_queries} | {measured:.3f} ({m_low:.3f}-{m_high:.3f}), "
            f"{len(hits)} | {diff:+.3f} ({diff - Z * se_diff:+.3f} to {diff + Z * se_diff:+.3f}) |",
            flush=True,
        )
    print(
        f"\n{'PASS' if ok else 'FAIL'} (pooled): |reported - measured| <= {TOLERANCE} and measured >= "
        f"{DEFAULT_TARGET_RECALL}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
