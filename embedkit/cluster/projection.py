"""The 2-D map: a projection of a sample of the clustered space (PCA, t-SNE or UMAP), drawn as a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import artefact
from .fit import ClusterResult
from .options import DEFAULT_MAP
from .preprocessing import sample_rows

MAP_ROWS = {"pca": 20_000, "tsne": 5_000, "umap": 20_000}


def project_2d(vectors: np.ndarray, how: str, seed: int) -> np.ndarray:
    """A 2-D projection of ``vectors`` by PCA, t-SNE (sklearn) or UMAP (umap-learn, when installed)."""
    if len(vectors) < 3 or vectors.shape[1] < 2:
        return (
            np.column_stack([vectors[:, 0], np.zeros(len(vectors))])
            if vectors.shape[1]
            else np.zeros((len(vectors), 2))
        )
    if how == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(2, perplexity=min(30.0, (len(vectors) - 1) / 3), init="pca", random_state=seed).fit_transform(
            vectors
        )
    if how == "umap":
        import umap

        return umap.UMAP(n_components=2, random_state=seed).fit_transform(vectors)
    from sklearn.decomposition import PCA

    return PCA(2, random_state=seed).fit_transform(vectors)


def draw_map(result: ClusterResult, path: Path, how: str = DEFAULT_MAP, seed: int = 0, title: str = "") -> int:
    """Draw the 2-D map of a sample of rows coloured by cluster into a PNG (atomically). Returns rows drawn."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = sample_rows(len(result.labels), MAP_ROWS[how], seed)
    xy = project_2d(result.vectors[rows], how, seed)
    labels = result.labels[rows]
    fig, ax = plt.subplots(figsize=(9, 7), dpi=110)
    try:
        noise = labels < 0
        if noise.any():
            ax.scatter(xy[noise, 0], xy[noise, 1], s=3, c="lightgrey", label="noise", linewidths=0)
        cmap = plt.get_cmap("tab20" if result.n_clusters <= 20 else "gist_ncar")
        colours = cmap(np.linspace(0, 1, max(result.n_clusters, 1), endpoint=result.n_clusters > 20))
        point_size = max(2.0, min(20.0, 4000 / max(len(rows), 1)))
        for c in range(result.n_clusters):
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
        if result.n_clusters <= 20:
            ax.legend(markerscale=3, fontsize=7, loc="best", title="cluster", frameon=False)
        ax.set_title(title or f"{len(rows):,} rows, {how.upper()} projection", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        with artefact.atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    return len(rows)
