"""Are `embedkit train`'s defaults as good as an expert's hand-tuned logistic regression? (issue #16)

Three real labelled sets (benchmarks/labelled_sets.py: fortunes by category, man-page NAME summaries by section,
Python docstrings by package), embedded once by embedkit (all-MiniLM-L6-v2, mean pooling, normalised). Both
sides use the same rows (``load_training_data``) and the same stratified 20% hold-out
(``train_test_split(range(n), stratify=y, random_state=seed)``, the split ``train``
makes):

- by hand: scikit-learn LogisticRegression over C in BY_HAND_CS (1e-4..100, 13 half-decades, the range train
  searches) with the StandardScaler on and off, every one scored on the test rows; the best of them (an oracle:
  it peeks at the test rows, so it is optimistic by the noise of 26 tries on a few hundred test rows) and
  StandardScaler + C=1 (the old default) are printed;
- embedkit: ``train(features, "label", out, refit=False)`` with every other default (C and the scaler chosen by
  CV on the training rows only; ``refit=False`` so the evaluated model is the one fitted on the same training
  rows as the by-hand ones).

It prints the accuracies, the gap to the best by-hand C, and the training cost: embedkit's fit (search + final
fit) over one by-hand fit of the same chosen setting, and over one fit of the old default. ``--timing-rows``
adds the same cost ratio on that many rows (vectors of the three sets drawn with replacement plus 1% noise, so
no two rows are identical). Exit 1 when a default is more than TOLERANCE below the best by-hand C.

Everything runs with ``--threads`` BLAS and OpenMP threads (default 1, as embedkit's search does), so embedkit
and the by-hand fits it is compared with are timed alike: on a shared 2-core machine spinning threads made a
960-row fit 25x slower and a 10,000-row one 10x, which would inflate the by-hand fit and flatter the ratio.
``--threads 0`` leaves the thread pools alone. ``--sets`` with no name runs the timing alone.

Run: python benchmarks/train_defaults.py [--sets fortunes manpages docstrings] [--workdir DIR] [--timing-rows 10000]
    [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import labelled_sets  # noqa: E402

TOLERANCE = 0.02
BY_HAND_CS = tuple(float(c) for c in np.logspace(-4, 2, 13))  # the range train searches, scored on test rows


def fit_seconds(X, y, C: float, standardize: bool, seed: int) -> tuple[object, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [StandardScaler()] if standardize else []
    clf = make_pipeline(*steps, LogisticRegression(C=C, max_iter=1000, random_state=seed))
    t0 = time.perf_counter()
    clf.fit(X, y)
    return clf, time.perf_counter() - t0


def one_set(name: str, workdir: Path, seed: int) -> dict:
    from sklearn.model_selection import train_test_split

    from embedkit.classify import load_training_data, train

    features = labelled_sets.embed(name, workdir, seed=seed)
    data = load_training_data(features, "label")
    X, y = data.X, data.y
    tr, te = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=seed)
    grid = {}
    for standardize in (True, False):
        for C in BY_HAND_CS:
            clf, _ = fit_seconds(X[tr], y[tr], C, standardize, seed)
            grid[(standardize, C)] = float(np.mean(clf.predict(X[te]) == y[te]))
    best = max(grid, key=grid.get)
    with tempfile.TemporaryDirectory() as tmp:
        metrics = train(features, "label", Path(tmp) / "model", seed=seed, refit=False).metrics
    search = metrics["search"]
    _, single = fit_seconds(X[tr], y[tr], search["chosen_C"], search["chosen_standardize"], seed)
    _, old = fit_seconds(X[tr], y[tr], 1.0, True, seed)
    return {
        "set": name,
        "rows": len(y),
        "classes": len(set(y.tolist())),
        "best": (grid[best], best),
        "old_default": grid[(True, 1.0)],
        "embedkit": metrics["accuracy"],
        "chosen": (search["chosen_C"], search["chosen_standardize"], search["chosen_cv_log_loss"]),
        "search_seconds": search["seconds"],
        "seconds": metrics["seconds"],
        "single": single,
        "old_single": old,
    }


def timing(rows: int, workdir: Path, seed: int) -> dict:
    from embedkit.classify import ClassifierOptions, fit_classifier, load_training_data

    parts = [load_training_data(labelled_sets.embed(n, workdir, seed=seed), "label") for n in labelled_sets.SETS]
    X = np.concatenate([p.X for p in parts])
    y = np.concatenate([np.char.add(f"{i}:", p.y.astype(str)) for i, p in enumerate(parts)])
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(y), rows)
    Xr = (X[pick] + rng.normal(0, 0.01 / np.sqrt(X.shape[1]), (rows, X.shape[1]))).astype(np.float32)
    yr = y[pick]
    # CPU seconds too: on a shared machine wall time swings with the other jobs, CPU time of this process much less.
    t0, c0 = time.perf_counter(), time.process_time()
    _, search = fit_classifier(Xr, yr, "logreg", ClassifierOptions(), seed=seed)
    total, total_cpu = time.perf_counter() - t0, time.process_time() - c0
    c0 = time.process_time()
    _, single = fit_seconds(Xr, yr, search["chosen_C"], search["chosen_standardize"], seed)
    single_cpu = time.process_time() - c0
    _, old = fit_seconds(Xr, yr, 1.0, True, seed)
    return {
        "classes": len(set(yr.tolist())),
        "total": total,
        "total_cpu": total_cpu,
        "single": single,
        "single_cpu": single_cpu,
        "old": old,
        **search,
        "search_rows": search["rows"],
        "rows": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="*", default=list(labelled_sets.SETS), choices=labelled_sets.SETS)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "embedkit-bench")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing-rows", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads of every fit; 0 = as found")
    args = parser.parse_args()
    if args.threads:
        # threadpoolctl limits the libraries loaded when it is entered: load scikit-learn's and torch's first.
        import scipy.optimize  # noqa: F401
        import sklearn.linear_model  # noqa: F401
        from threadpoolctl import threadpool_limits

        import embedkit.embed  # noqa: F401

        with threadpool_limits(limits=args.threads):
            return run(args)
    return run(args)


def run(args: argparse.Namespace) -> int:
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.1f}", flush=True)
    ok = True
    print(
        "| set | rows | classes | by hand best (scaler, C) | by hand scaler + C=1 | embedkit default (chosen) | gap "
        "| train s | x one fit | x old default fit |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.sets:
        r = one_set(name, args.workdir, args.seed)
        acc, (scaled, C) = r["best"]
        gap = r["embedkit"] - acc
        ok &= gap >= -TOLERANCE
        c, s, cv = r["chosen"]
        print(
            f"| {name} | {r['rows']} | {r['classes']} | {acc:.4f} ({'on' if scaled else 'off'}, {C:g}) | "
            f"{r['old_default']:.4f} | {r['embedkit']:.4f} ({'on' if s else 'off'}, C {c:g}, CV log-loss {cv:.3f}) | "
            f"{gap:+.4f} | "
            f"{r['seconds']:.1f} | {r['seconds'] / r['single']:.1f} | {r['seconds'] / r['old_single']:.1f} |",
            flush=True,
        )
    if args.timing_rows:
        t = timing(args.timing_rows, args.workdir, args.seed)
        print(
            f"timing, {t['rows']} rows x {t['classes']} classes: search + fit {t['total']:.1f}s (search "
            f"{t['seconds']:.1f}s on "
            f"{t['search_rows']} rows, chose C {t['chosen_C']:g}, scaler "
            f"{'on' if t['chosen_standardize'] else 'off'}); one fit of that setting {t['single']:.1f}s "
            f"-> x{t['total'] / t['single']:.1f}; one fit of scaler + C=1 {t['old']:.1f}s "
            f"-> x{t['total'] / t['old']:.1f}; in CPU seconds search + fit {t['total_cpu']:.1f}, one fit "
            f"{t['single_cpu']:.1f} -> x{t['total_cpu'] / t['single_cpu']:.1f}"
        )
    from embedkit.classify import LOGREG_CS, LOGREG_SEARCH_FOLDS, LOGREG_SEARCH_MAX_ROWS, LOGREG_SEARCH_PATIENCE

    print(
        f"embedkit's search: C {LOGREG_CS[0]:g}..{LOGREG_CS[-1]:g} x {len(LOGREG_CS)}, scaler on/off, lowest "
        f"{LOGREG_SEARCH_FOLDS}-fold stratified CV log-loss on <= {LOGREG_SEARCH_MAX_ROWS:,} training rows, "
        f"path stopped {LOGREG_SEARCH_PATIENCE} step(s) past it; threads: {args.threads or 'as found'}"
    )
    print(f"finished {time.strftime('%H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'PASS' if ok else 'FAIL'}: every default within {TOLERANCE} of the best by-hand C")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
