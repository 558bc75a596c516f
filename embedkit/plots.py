"""Every figure embedkit draws: the cluster map, the probe plot and the audit's figures.

All of them use matplotlib's object API (a ``Figure`` with its own ``FigureCanvasAgg``), never pyplot: a library
must not select the host program's backend or leave figures in pyplot's global registry (a leak when nobody
closes them, and state shared between threads). matplotlib is imported inside each function, so importing this
module costs nothing.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import artefact

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .probe.score import PairScore

# WEAT's d lies in [-2, 2]; a fixed scale keeps colours comparable between models and runs.
D_LIMIT = 2.0
ALPHA = 0.05
# Dagger: p < alpha the other way round than the test is written (not the hypothesis it tested).
REVERSE = "\u2020"


def _figure(**kwargs: Any) -> Figure:
    """A figure with its own Agg canvas (what pyplot would attach, without pyplot's global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _png_bytes(fig: Figure, **savefig: Any) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png", **savefig)
    return out.getvalue()


def _save_png(fig: Figure, path: Path, **savefig: Any) -> None:
    """Write the figure as a PNG atomically: a reader sees the old file or the whole new one."""
    with artefact.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", **savefig)


def confusion_matrix(matrix: list[list[int]], labels: list, path: Path, title: str) -> None:
    """A classifier's confusion matrix (``train``'s ``confusion_matrix.png``); values shown up to 30 classes."""
    from sklearn.metrics import ConfusionMatrixDisplay

    n = len(labels)
    side = min(4 + 0.45 * n, 30)
    fig = _figure(figsize=(side, side * 0.85), layout="constrained")
    ax = fig.add_subplot()
    display = ConfusionMatrixDisplay(np.asarray(matrix), display_labels=[str(c) for c in labels])
    display.plot(ax=ax, include_values=n <= 30, xticks_rotation="vertical", colorbar=True, cmap="Blues")
    ax.set_title(title)
    _save_png(fig, path, dpi=100)


def cluster_map(xy: np.ndarray, labels: np.ndarray, n_clusters: int, path: Path, title: str) -> None:
    """A 2-D scatter of ``xy`` coloured and labelled by cluster (noise, label -1, in grey), written to ``path``."""
    import matplotlib

    fig = _figure(figsize=(9, 7), dpi=110)
    ax = fig.add_subplot()
    noise = labels < 0
    if noise.any():
        ax.scatter(xy[noise, 0], xy[noise, 1], s=3, c="lightgrey", label="noise", linewidths=0)
    cmap = matplotlib.colormaps["tab20" if n_clusters <= 20 else "gist_ncar"]
    colours = cmap(np.linspace(0, 1, max(n_clusters, 1), endpoint=n_clusters > 20))
    point_size = max(2.0, min(20.0, 4000 / max(len(xy), 1)))
    for c in range(n_clusters):
        mine = labels == c
        if not mine.any():
            continue
        ax.scatter(
            xy[mine, 0],
            xy[mine, 1],
            s=point_size,
            color=colours[c % len(colours)],
            label=str(c),
            linewidths=0,
            alpha=0.8,
        )
        cx, cy = np.median(xy[mine], axis=0)
        ax.annotate(
            str(c),
            (cx, cy),
            fontsize=9,
            weight="bold",
            ha="center",
            va="center",
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.7, "lw": 0},
        )
    if n_clusters <= 20:
        ax.legend(markerscale=3, fontsize=7, loc="best", title="cluster", frameon=False)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    _save_png(fig, path, bbox_inches="tight")


def probe_plot(scores: Sequence[PairScore], path: Path, title: str, best: PairScore | None = None) -> None:
    """Score vs layer, one line per pooling (band: +/- one std over the folds); one panel per metric."""
    panels: list[tuple[str, str, str | None]] = [
        ("accuracy", "accuracy_mean", "accuracy_std"),
        ("macro-F1", "macro_f1_mean", "macro_f1_std"),
    ]
    if any(s.nmi is not None for s in scores):
        panels.append(("NMI (k-means)", "nmi", None))
    poolings = list(dict.fromkeys(s.pooling for s in scores))
    layers = sorted({s.layer for s in scores})
    fig = _figure(figsize=(4.2 * len(panels) + 0.6, 4.0), layout="constrained")
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
    _save_png(fig, path, dpi=100)


def heatmap_png(rows: Sequence[dict[str, Any]], title: str, *, dpi: int = 100) -> bytes:
    """PNG bytes: one row per test, one column per layer, colour = d (red: X-A / Y-B, blue: the reverse).

    Cells hold d; a star marks WEAT's one-sided p < 0.05 as the test is written (X~A), a dagger p < 0.05 the other
    way round (not the hypothesis the test was written for: each is a 5% test, together 10%). The colormap is
    diverging and centred at 0, so no colour is spent on "no association".
    """
    from matplotlib.colors import TwoSlopeNorm

    tests = list(dict.fromkeys(r["test"] for r in rows))
    layers = sorted({int(r["layer"]) for r in rows})
    poolings = list(dict.fromkeys(r["pooling"] for r in rows))
    cell = {(r["test"], int(r["layer"]), r["pooling"]): r for r in rows}
    width = 1.6 + max(3.0, 0.55 * len(layers)) * len(poolings) + 2.4
    fig = _figure(figsize=(width, 1.2 + 0.45 * len(tests)), layout="constrained")
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
    return _png_bytes(fig, dpi=dpi)


def separation_png(rows: Sequence[dict[str, Any]], title: str, *, dpi: int = 100) -> bytes:
    """PNG bytes: how well a linear probe predicts the group, per layer (one line per pooling), against the share
    of the largest group (what guessing gets); a hollow marker where the permutation test is not significant."""
    fig = _figure(figsize=(6.4, 3.8), layout="constrained")
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
    return _png_bytes(fig, dpi=dpi)


__all__ = ["ALPHA", "D_LIMIT", "REVERSE", "cluster_map", "heatmap_png", "probe_plot", "separation_png"]
