"""The classify stage: train a classifier on stored features, evaluate it, save it safely, predict with it.

A model directory holds::

    model.skops             the fitted scikit-learn pipeline (skops format: loading it runs no code)
    metrics.json            accuracy, macro-F1, per-class report, confusion matrix, counts, settings
    confusion_matrix.png    the evaluation's confusion matrix
    eval_predictions.parquet  id, true label, predicted label (and fold) of every evaluated row
    embedkit_model.json     the manifest, written LAST: classifier, classes, label column, the extraction
                            settings of the training vectors, the sha256 and size of every file, versions

The directory is written by the artefact protocol (:mod:`embedkit.artefact`): under a lock, built aside and
switched in whole, so a reader sees the old model or the new one, never a mix. Loading verifies every file
against the manifest and every manifest field before use. Because the manifest holds the exact extraction
settings, ``predict`` embeds raw text the way the training data was embedded.

One module per job: ``options`` (classifiers, knobs, grids), ``fit`` (the CV choice of settings, the pipeline,
K-fold predictions), ``data`` (training rows and label checks), ``metrics`` (evaluation, report, plot),
``files`` (the model directory format, its checks, ``embedkit info``), ``model`` (loading), ``training``
(``train``) and ``predict`` (``predict_file``). Every public name is re-exported here.
"""

from __future__ import annotations

from ..plots import confusion_matrix as plot_confusion_matrix
from .data import LABELS_LIKE_TEXT_MIN_ROWS, TrainingData, check_classes, load_training_data
from .files import (
    CONFUSION_PNG,
    EVAL_PREDICTIONS,
    LABEL_TYPES,
    MANIFEST,
    METRICS_FILE,
    MODEL_FILE,
    MODEL_FORMAT_VERSION,
    MODEL_KIND,
    TRUSTED_EXTRA_TYPES,
    check_manifest,
    describe_model,
    model_info_lines,
)
from .fit import build_classifier, cross_validate, fit_classifier, search_logreg, settled
from .metrics import chosen_note, evaluate, fitted_on, format_report
from .model import ClassifierModel, load_model
from .options import (
    CLASS_WEIGHTS,
    CLASSIFIERS,
    DEFAULT_C,
    DEFAULT_CLASSIFIER,
    DEFAULT_TEST_SIZE,
    KNN_METRICS,
    KNN_WEIGHTS,
    LOGREG_CS,
    LOGREG_SEARCH_FOLDS,
    LOGREG_SEARCH_MAX_ROWS,
    LOGREG_SEARCH_PATIENCE,
    MLP_EARLY_STOPPING_MIN_PER_CLASS,
    RIDGE_ALPHAS,
    ClassifierOptions,
)
from .predict import NON_FINITE_STATUS, OUTPUT_FORMATS, PredictSummary, matching_column, predict_file, proba_column
from .training import TrainResult, train

__all__ = [
    "CLASSIFIERS",
    "CLASS_WEIGHTS",
    "CONFUSION_PNG",
    "ClassifierModel",
    "ClassifierOptions",
    "DEFAULT_C",
    "DEFAULT_CLASSIFIER",
    "DEFAULT_TEST_SIZE",
    "EVAL_PREDICTIONS",
    "KNN_METRICS",
    "KNN_WEIGHTS",
    "LABELS_LIKE_TEXT_MIN_ROWS",
    "LABEL_TYPES",
    "LOGREG_CS",
    "LOGREG_SEARCH_FOLDS",
    "LOGREG_SEARCH_MAX_ROWS",
    "LOGREG_SEARCH_PATIENCE",
    "MANIFEST",
    "METRICS_FILE",
    "MLP_EARLY_STOPPING_MIN_PER_CLASS",
    "MODEL_FILE",
    "MODEL_FORMAT_VERSION",
    "MODEL_KIND",
    "NON_FINITE_STATUS",
    "OUTPUT_FORMATS",
    "PredictSummary",
    "RIDGE_ALPHAS",
    "TRUSTED_EXTRA_TYPES",
    "TrainResult",
    "TrainingData",
    "build_classifier",
    "check_classes",
    "check_manifest",
    "chosen_note",
    "cross_validate",
    "describe_model",
    "evaluate",
    "fit_classifier",
    "fitted_on",
    "format_report",
    "load_model",
    "load_training_data",
    "matching_column",
    "model_info_lines",
    "plot_confusion_matrix",
    "predict_file",
    "proba_column",
    "search_logreg",
    "settled",
    "train",
]
