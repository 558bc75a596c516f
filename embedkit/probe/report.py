"""What the report shows: the printed table and the score-vs-layer plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import artefact
from .score import PairScore


def format_table(scores: list[PairScore], best: PairScore | None = None) -> str:
    """The printed table: one row per pair, mean +/- std over the folds; the best pair starred."""
    with_nmi = any(s.nmi is not None for s in scores)
    width = max(8, *(len(s.pooling) for s in scores))
    header = f"  {'layer':>5}  {'pooling':<{width}}  {'accuracy':>15}  {'macro-F1':>15}" + (
        "  {:>6}".format("NMI") if with_nmi else ""
    )
    lines = [header]
    for s in scores:
        mark = "*" if s is best else " "
        line = (
            f"{mark} {s.layer:>5}  {s.pooling:<{width}}  {s.accuracy_mean:7.4f} ± {s.accuracy_std:.4f}  "
            f"{s.macro_f1_mean:7.4f} ± {s.macro_f1_std:.4f}"
        )
        if with_nmi:
            line += f"  {s.nmi:6.4f}" if s.nmi is not None else "  " + "-".rjust(6)
        lines.append(line)
    return "\n".join(lines)


def plot_scores(scores: list[PairScore], path: Path, title: str, best: PairScore | None = None) -> None:
    """Score vs layer, one line per pooling (band: +/- one std over the folds); one panel per metric."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels: list[tuple[str, str, str | None]] = [
        ("accuracy", "accuracy_mean", "accuracy_std"),
        ("macro-F1", "macro_f1_mean", "macro_f1_std"),
    ]
    if any(s.nmi is not None for s in scores):
        panels.append(("NMI (k-means)", "nmi", None))
    poolings = list(dict.fromkeys(s.pooling for s in scores))
    layers = sorted({s.layer for s in scores})
    fig = Figure(figsize=(4.2 * len(panels) + 0.6, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (name, mean_attr, std_attr) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for pooling in poolings:
            rows = sorted((s for s in scores if s.pooling == pooling), key=lambda s: s.layer)
            x = np.array([s.layer for s in rows])
            y = np.array([getattr(s, mean_attr) for s in rows], dtype=float)
            (line,) = ax.plot(x, y, marker="o", label=pooling)
            if std_attr:
                spread = np.array([getattr(s, std_attr) for s in rows])
                ax.fill_between(x, y - spread, y + spread, alpha=0.15, color=line.get_color())
        if best is not None and getattr(best, mean_attr) is not None:
            ax.plot(
                [best.layer],
                [getattr(best, mean_attr)],
                marker="*",
                markersize=16,
                color="black",
                linestyle="none",
                label=f"best: layer {best.layer}, {best.pooling}",
            )
        ax.set_xticks(layers)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize="small")
    fig.suptitle(title, fontsize="medium")
    with artefact.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
