"""The classifiers train offers, their tuning knobs (``ClassifierOptions``) and the grids their defaults are
chosen over."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, choice_error

CLASSIFIERS = ("logreg", "linear-svm", "knn", "ridge", "mlp")


DEFAULT_CLASSIFIER = "logreg"


KNN_METRICS = ("cosine", "euclidean", "manhattan")


KNN_WEIGHTS = ("uniform", "distance")


CLASS_WEIGHTS = ("none", "balanced")


DEFAULT_TEST_SIZE = 0.2


# The MLP's early stopping holds out 10% of the training rows (stratified); below this many training rows per
# class that hold-out is too small to be stratified or meaningful, so the MLP trains for max_iter instead.
MLP_EARLY_STOPPING_MIN_PER_CLASS = 20


# Ridge's penalty when none is given is chosen by leave-one-out over this grid (closed form: one decomposition,
# not one fit per value). A fixed alpha=1 barely regularises hundreds of standardised dimensions, often more
# than the rows: 320 fortunes x 384 MiniLM dims scored 0.63 hold-out accuracy at alpha=1, 0.83 at alpha=100,
# and leave-one-out picked ~300.
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-2, 4, 13))


# Logistic regression's C, when none is given, is chosen with the scaler on and off by stratified K-fold CV
# log-loss on the training rows over this grid. A fixed StandardScaler + C=1 overfits hundreds of dimensions:
# on normalised MiniLM vectors of 12 fortune categories it scored 0.675 against 0.718 for the best C by hand.
# Half-decades from 1e-4: standardised sentence vectors often score best at C <= 0.01 (man-page summaries by
# section: 0.678 held-out at C=0.01, the old grid's edge, against 0.615 at C=1), unscaled ones near C=1..10.
LOGREG_CS = tuple(float(c) for c in np.logspace(-4, 2, 13))


# 3 folds: ranked by log-loss, 3-fold CV chose the same C and scaler on the three sets of
# benchmarks/train_defaults.py for each of three fold seeds (and as 5-fold with seed 0), at about 60% of 5-fold's
# cost (3 fits of 2/3 of the rows per C against 5 of 4/5): 3.6x against 5.9x a single fit in CPU time at 10,000
# rows. (Ranked by accuracy, 3 folds had ranked the scaler wrongly on man pages: 0.609 scaled vs 0.610 unscaled,
# where the held-out rows gave 0.678 vs 0.657.)
LOGREG_SEARCH_FOLDS = 3


# The search runs on a stratified sample of at most this many training rows, then the chosen settings are fitted
# on every training row: this bounds its cost on large sets, and a C chosen on 2,000 rows ranks the grid as one
# chosen on more does for linear models.
LOGREG_SEARCH_MAX_ROWS = 2_000


# Each fold walks the grid from the smallest C up, every fit starting from the previous solution (warm start),
# and the walk stops once the mean CV log-loss has fallen below its start and then not beaten its best for this
# many steps: the large-C fits, slow to converge on nearly separable data, are skipped once they can only overfit
# more. One step suffices for the log-loss, which has a single minimum along the path on every set measured
# (accuracy, flat and noisy, needed 2); each step saved is one of the costliest fits of the search.
LOGREG_SEARCH_PATIENCE = 1


DEFAULT_C = 1.0  # linear-svm's C when none is given (scikit-learn has no CV variant of LinearSVC)


@dataclass(frozen=True)
class ClassifierOptions:
    """Tuning knobs; each classifier reads the ones that apply to it.

    Attributes:
        C: inverse regularisation strength (logreg, linear-svm); larger fits the training data more closely.
            None = logreg chooses it by cross-validation (``search_logreg``), linear-svm uses ``DEFAULT_C``.
        alpha: L2 penalty (ridge, mlp); None = ridge picks it by leave-one-out over ``RIDGE_ALPHAS``, mlp uses 1e-4.
        k_neighbors: neighbours voting (knn).
        knn_metric: distance for knn (cosine suits hidden states, whose norms vary with text length).
        knn_weights: ``distance`` lets closer neighbours count more (knn).
        hidden_size: units of the MLP's single hidden layer.
        max_iter: optimiser iterations (logreg, linear-svm, mlp).
        class_weight: ``balanced`` reweights rare classes (logreg, linear-svm, ridge).
        standardize: scale every dimension to zero mean, unit variance first. Transformer hidden states have a
            few dimensions with huge magnitudes (GPT-2 especially) that otherwise dominate every linear model
            and distance, so it is on by default for every classifier but logreg; there None (the default) lets
            the cross-validation of ``C`` decide, since normalised sentence vectors often do better unscaled.
    """

    C: float | None = None
    alpha: float | None = None
    k_neighbors: int = 5
    knn_metric: str = "cosine"
    knn_weights: str = "distance"
    hidden_size: int = 256
    max_iter: int = 1000
    class_weight: str = "none"
    standardize: bool | None = None

    def __post_init__(self) -> None:
        if self.C is not None and self.C <= 0:
            raise ConfigError(f"C must be positive, got {self.C}")
        if self.alpha is not None and self.alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {self.alpha}")
        if self.k_neighbors < 1:
            raise ConfigError(f"k-neighbors must be at least 1, got {self.k_neighbors}")
        if self.hidden_size < 1:
            raise ConfigError(f"hidden-size must be at least 1, got {self.hidden_size}")
        if self.max_iter < 1:
            raise ConfigError(f"max-iter must be at least 1, got {self.max_iter}")
        if self.knn_metric not in KNN_METRICS:
            raise choice_error("knn metric", self.knn_metric, KNN_METRICS)
        if self.knn_weights not in KNN_WEIGHTS:
            raise choice_error("knn weights", self.knn_weights, KNN_WEIGHTS)
        if self.class_weight not in CLASS_WEIGHTS:
            raise choice_error("class weight", self.class_weight, CLASS_WEIGHTS)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def searches(self, classifier: str) -> bool:
        """Whether ``classifier`` chooses its settings by cross-validation with these options."""
        return classifier == "logreg" and self.C is None
