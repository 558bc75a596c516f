"""The 2-D map: a projection of a sample of the clustered space (PCA, t-SNE or UMAP), drawn as a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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
    from ..plots import cluster_map

    rows = sample_rows(len(result.labels), MAP_ROWS[how], seed)
    xy = project_2d(result.vectors[rows], how, seed)
    cluster_map(
        xy, result.labels[rows], result.n_clusters, path, title or f"{len(rows):,} rows, {how.upper()} projection"
    )
    return len(rows)
