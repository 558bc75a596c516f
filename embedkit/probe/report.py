"""The printed table of the probe's scores (the plot is :func:`embedkit.plots.probe_plot`)."""

from __future__ import annotations

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
