"""The audit's figure: signed effect sizes, tests x layers, one panel per pooling (matplotlib's object API)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

# WEAT's d lies in [-2, 2]; a fixed scale keeps colours comparable between models and runs.
D_LIMIT = 2.0
ALPHA = 0.05
# Dagger: p < alpha the other way round than the test is written (not the hypothesis it tested).
REVERSE = "\u2020"


def heatmap_png(rows: Sequence[dict[str, Any]], title: str, *, dpi: int = 100) -> bytes:
    """PNG bytes: one row per test, one column per layer, colour = d (red: X-A / Y-B, blue: the reverse).

    Cells hold d; a star marks WEAT's one-sided p < 0.05 as the test is written (X~A), a dagger p < 0.05 the other
    way round (not the hypothesis the test was written for: each is a 5% test, together 10%). The colormap is
    diverging and centred at 0, so no colour is spent on "no association".
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    tests = list(dict.fromkeys(r["test"] for r in rows))
    layers = sorted({int(r["layer"]) for r in rows})
    poolings = list(dict.fromkeys(r["pooling"] for r in rows))
    cell = {(r["test"], int(r["layer"]), r["pooling"]): r for r in rows}
    width = 1.6 + max(3.0, 0.55 * len(layers)) * len(poolings) + 2.4
    fig = Figure(figsize=(width, 1.2 + 0.45 * len(tests)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(poolings), squeeze=False, sharey=True)[0]
    norm = TwoSlopeNorm(vmin=-D_LIMIT, vcenter=0.0, vmax=D_LIMIT)
    image = None
    for ax, pooling in zip(axes, poolings):
        d = np.full((len(tests), len(layers)), np.nan)
        for i, test in enumerate(tests):
            for j, layer in enumerate(layers):
                r = cell.get((test, layer, pooling))
                if r is None:
                    continue
                d[i, j] = r["effect_size"]
                star = "*" if r["p_value"] < ALPHA else REVERSE if r["p_reverse"] < ALPHA else ""
                # Dark cells get white text: readable at both ends of the scale.
                colour = "white" if abs(r["effect_size"]) > 0.55 * D_LIMIT else "black"
                ax.text(j, i, f"{r['effect_size']:.2f}{star}", ha="center", va="center", fontsize=7, color=colour)
        image = ax.imshow(d, cmap="RdBu_r", norm=norm, aspect="auto")
        ax.set_xticks(range(len(layers)), [str(x) for x in layers], fontsize=8)
        ax.set_yticks(range(len(tests)), tests, fontsize=8)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_title(f"pooling: {pooling}", fontsize="small")
    assert image is not None  # one panel per pooling, and a run has at least one pooling
    colorbar = fig.colorbar(image, ax=list(axes), shrink=0.9)
    colorbar.set_label("effect size d (+: X~A, Y~B)", fontsize=8)
    fig.suptitle(f"{title}  (* p < {ALPHA}; {REVERSE} p < {ALPHA} the other way round)", fontsize="medium")
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=dpi)
    return out.getvalue()


def separation_png(rows: Sequence[dict[str, Any]], title: str, *, dpi: int = 100) -> bytes:
    """PNG bytes: how well a linear probe predicts the group, per layer (one line per pooling), against the share
    of the largest group (what guessing gets); a hollow marker where the permutation test is not significant."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for pooling in dict.fromkeys(r["pooling"] for r in rows):
        mine = sorted((r for r in rows if r["pooling"] == pooling), key=lambda r: r["layer"])
        x = [r["layer"] for r in mine]
        (line,) = ax.plot(x, [r["probe_accuracy"] for r in mine], label=f"probe accuracy ({pooling})")
        for r in mine:
            filled = r["p_value"] < ALPHA
            ax.plot(
                [r["layer"]],
                [r["probe_accuracy"]],
                marker="o",
                linestyle="none",
                color=line.get_color(),
                markerfacecolor=line.get_color() if filled else "white",
            )
    ax.axhline(rows[0]["majority_share"], color="grey", linestyle="--", label="majority share (guessing)")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(sorted({r["layer"] for r in rows}))
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("accuracy at predicting the group")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    fig.suptitle(f"{title}  (filled: spread p < {ALPHA})", fontsize="medium")
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=dpi)
    return out.getvalue()


__all__ = ["D_LIMIT", "heatmap_png", "separation_png"]
