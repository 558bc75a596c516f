"""What a clustering asks for: the method, k, the pre-processing and the map, validated on creation."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError, choice_error

METHODS = ("kmeans", "minibatch-kmeans", "hdbscan", "agglomerative")
DEFAULT_METHOD = "kmeans"
MAP_METHODS = ("pca", "tsne", "umap", "none")
DEFAULT_MAP = "pca"
AUTO = "auto"
NOISE = -1
DEFAULT_PCA = 64
DEFAULT_K_RANGE = (2, 20)
DEFAULT_MIN_CLUSTER_SIZE = 10


@dataclass(frozen=True)
class ClusterOptions:
    """How to cluster. Validated on creation; every unknown value raises ``ConfigError``.

    Args:
        method: one of ``METHODS``.
        k: number of clusters, or ``"auto"`` (silhouette over ``k_range`` on a sample). Ignored by HDBSCAN,
            which finds the number itself (an explicit number with HDBSCAN is an error).
        k_range: inclusive ``(min, max)`` candidates for ``k="auto"``.
        standardize: subtract the mean and scale each dimension to unit variance (see the module notes).
        center: subtract the mean (implied by ``standardize``; on its own when ``standardize`` is off).
        normalize: L2-normalise rows (after centering/scaling, before PCA).
        pca: PCA components (0 = no reduction). Clamped to the dimension and sample size.
        min_cluster_size: HDBSCAN's smallest cluster.
        seed: random seed for sampling, k-means initialisation, PCA and the map.
        map: 2-D map projection, one of ``MAP_METHODS``.
    """

    method: str = DEFAULT_METHOD
    k: int | str = AUTO
    k_range: tuple[int, int] = DEFAULT_K_RANGE
    standardize: bool = True
    center: bool = True
    normalize: bool = True
    pca: int = DEFAULT_PCA
    min_cluster_size: int = DEFAULT_MIN_CLUSTER_SIZE
    seed: int = 0
    map: str = DEFAULT_MAP

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise choice_error("clustering method", self.method, METHODS)
        if self.map not in MAP_METHODS:
            raise choice_error("map projection", self.map, MAP_METHODS)
        object.__setattr__(self, "k", parse_k(self.k))
        lo, hi = (int(v) for v in self.k_range)
        if not 2 <= lo <= hi:
            raise ConfigError(f"k range must satisfy 2 <= min <= max; got {lo}:{hi}")
        object.__setattr__(self, "k_range", (lo, hi))
        if self.method == "hdbscan" and self.k != AUTO:
            raise ConfigError(
                "hdbscan finds the number of clusters itself; drop --k and tune --min-cluster-size instead"
            )
        if self.pca < 0:
            raise ConfigError(f"pca must be >= 0 (0 = no reduction); got {self.pca}")
        if self.min_cluster_size < 2:
            raise ConfigError(f"min_cluster_size must be >= 2; got {self.min_cluster_size}")
        if self.map == "umap":
            _require_umap()

    @property
    def centers(self) -> bool:
        return self.center or self.standardize


def parse_k(value: int | str) -> int | str:
    """``"auto"`` or an integer >= 2 (strings of digits accepted, as the CLI passes them)."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"k must be 'auto' or an integer >= 2; got {value!r}") from None
    if k < 2:
        raise ConfigError(f"k must be 'auto' or an integer >= 2; got {k}")
    return k


def parse_k_range(value: str) -> tuple[int, int]:
    """``"MIN:MAX"`` -> ``(MIN, MAX)``."""
    try:
        lo, hi = (int(v) for v in str(value).split(":"))
    except ValueError:
        raise ConfigError(f"k range must look like MIN:MAX (e.g. 2:20); got {value!r}") from None
    return lo, hi


def _require_umap():
    try:
        import umap  # noqa: F401
    except ImportError:
        raise ConfigError(
            "map 'umap' needs the umap-learn package (pip install umap-learn); use 'pca' or 'tsne'"
        ) from None
