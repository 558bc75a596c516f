"""What each cluster is about: size, the most central rows and texts, distinctive terms (c-TF-IDF)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .fit import ClusterResult
from .options import NOISE

CENTRAL_TEXTS = 5
TOP_TERMS = 10
TEXT_PREVIEW_CHARS = 200


def distinctive_terms(
    texts: list[str | None], labels: np.ndarray, n_clusters: int, top: int = TOP_TERMS
) -> list[list[str]]:
    """The ``top`` most distinctive words of each cluster by class-based TF-IDF (c-TF-IDF, as in BERTopic).

    All texts of a cluster form one document; a term scores ``tf(term, cluster) * log(1 + A / f(term))`` where
    ``tf`` is its frequency in the cluster normalised by the cluster's word count, ``A`` the mean word count
    per cluster and ``f`` the term's count over all clusters: frequent in the cluster, rare elsewhere.
    English stop words are left out. Clusters with no usable words get an empty list.
    """
    from scipy import sparse
    from sklearn.feature_extraction.text import CountVectorizer

    keep = np.array([bool(t) and lab >= 0 for t, lab in zip(texts, labels)], dtype=bool)
    if not keep.any():
        return [[] for _ in range(n_clusters)]
    docs = [t for t, k in zip(texts, keep) if k]
    min_df = 2 if len(docs) >= 1_000 else 1  # drop one-off tokens (typos, ids) when there is enough text
    try:
        counts = CountVectorizer(stop_words="english", min_df=min_df).fit(docs)
    except ValueError:  # empty vocabulary: only stop words or punctuation
        return [[] for _ in range(n_clusters)]
    matrix = counts.transform(docs)
    kept_labels = labels[keep]
    indicator = sparse.csr_matrix(
        (np.ones(len(kept_labels)), (kept_labels, np.arange(len(kept_labels)))), shape=(n_clusters, len(kept_labels))
    )
    per_cluster = np.asarray((indicator @ matrix).todense(), dtype=np.float64)
    words = per_cluster.sum(axis=1, keepdims=True)
    tf = per_cluster / np.maximum(words, 1)
    idf = np.log1p(words.mean() / np.maximum(per_cluster.sum(axis=0), 1))
    scores = tf * idf
    vocab = counts.get_feature_names_out()
    out = []
    for row in scores:
        order = np.argsort(-row, kind="stable")[:top]
        out.append([str(vocab[i]) for i in order if row[i] > 0])
    return out


def _preview(text: Any) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= TEXT_PREVIEW_CHARS else flat[: TEXT_PREVIEW_CHARS - 1] + "…"


def describe_clusters(result: ClusterResult, texts: list | None, ids: list) -> list[dict[str, Any]]:
    """Per cluster: size, share, mean distance, the ids (and texts) of the most central rows, distinctive terms."""
    labels, distances = result.labels, result.distances
    terms = distinctive_terms(texts, labels, result.n_clusters) if texts is not None else None
    sizes = np.bincount(labels[labels >= 0], minlength=result.n_clusters)
    n = len(labels)
    clusters = []
    for c in range(result.n_clusters):
        rows = np.flatnonzero(labels == c)
        central = rows[np.argsort(distances[rows], kind="stable")[:CENTRAL_TEXTS]]
        entry: dict[str, Any] = {
            "cluster": c,
            "size": int(sizes[c]),
            "share": round(float(sizes[c]) / n, 4),
            "mean_distance": round(float(distances[rows].mean()), 4) if len(rows) else None,
            "central_ids": [ids[i] for i in central],
        }
        if texts is not None and terms is not None:  # terms exist exactly when texts do
            entry["central_texts"] = [_preview(texts[i]) for i in central if texts[i] is not None]
            entry["terms"] = terms[c]
        clusters.append(entry)
    noise = int((labels < 0).sum())
    if noise:
        clusters.append(
            {"cluster": NOISE, "size": noise, "share": round(noise / n, 4), "mean_distance": None, "central_ids": []}
        )
    return clusters
