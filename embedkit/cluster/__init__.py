"""Clustering of a features file: pre-processing, k choice, fit, summaries, metrics and a 2-D map.

The stage reads one embedding column of a Parquet written by ``embedkit embed`` and writes a directory:

* ``clusters.parquet``: ``id``, ``cluster`` (int32; -1 = noise, HDBSCAN only), ``distance`` (Euclidean
  distance to the cluster's centroid in the clustered space; null for noise) and any ``--keep`` columns;
* ``map.png``: a 2-D map of the clustered space coloured by cluster;
* ``summary.json``: sizes, most central texts, distinctive terms (c-TF-IDF), metrics, settings;
* ``embedkit_clusters.json``: the manifest (sha256 and size of every file), written last.

The directory follows the artefact protocol (:mod:`embedkit.artefact`): written under a lock, built aside and
switched in whole, so ``--overwrite`` keeps the old clustering until the new one is complete and two runs never
mix their files. :func:`load_clustering` reads one back, verified.

One module per job: ``options`` (what to do), ``preprocessing`` (standardise, L2, PCA; the measured reasons are in
its docstring), ``estimators`` and ``fit`` (labels, centroids), ``k_selection`` (``k="auto"``), ``metrics``,
``describe`` (central texts, c-TF-IDF terms), ``projection`` (the 2-D map), ``files`` (the directory format) and
``run`` (:func:`cluster_file`, the stage).
"""

from __future__ import annotations

from .describe import describe_clusters, distinctive_terms
from .files import FILE_CLUSTERS, FILE_MAP, FILE_SUMMARY, MANIFEST, Clustering, load_clustering
from .fit import ClusterResult, cluster_prepared, cluster_vectors
from .k_selection import choose_k
from .metrics import cluster_metrics
from .options import (
    AUTO,
    DEFAULT_K_RANGE,
    DEFAULT_MAP,
    DEFAULT_METHOD,
    DEFAULT_MIN_CLUSTER_SIZE,
    DEFAULT_PCA,
    MAP_METHODS,
    METHODS,
    NOISE,
    ClusterOptions,
    parse_k,
    parse_k_range,
)
from .preprocessing import preprocess
from .projection import draw_map, project_2d
from .run import ClusterRun, cluster_file

__all__ = [
    "AUTO",
    "DEFAULT_K_RANGE",
    "DEFAULT_MAP",
    "DEFAULT_METHOD",
    "DEFAULT_MIN_CLUSTER_SIZE",
    "DEFAULT_PCA",
    "FILE_CLUSTERS",
    "FILE_MAP",
    "FILE_SUMMARY",
    "MANIFEST",
    "MAP_METHODS",
    "METHODS",
    "NOISE",
    "ClusterOptions",
    "ClusterResult",
    "ClusterRun",
    "Clustering",
    "choose_k",
    "cluster_file",
    "cluster_metrics",
    "cluster_prepared",
    "cluster_vectors",
    "describe_clusters",
    "distinctive_terms",
    "draw_map",
    "load_clustering",
    "parse_k",
    "parse_k_range",
    "preprocess",
    "project_2d",
]
