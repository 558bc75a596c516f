"""The model directory format: the files ``train`` writes (sealed by the manifest, written last), the checks of every
manifest field a reader uses, and what ``embedkit info MODEL_DIR`` shows."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import artefact
from ..config import ExtractConfig
from ..errors import ConfigError, InputError
from ..plots import confusion_matrix as plot_confusion_matrix
from ..store import library_versions
from .data import TrainingData
from .metrics import _jsonable, chosen_note, fitted_on
from .options import CLASSIFIERS

MANIFEST = "embedkit_model.json"


MODEL_FILE = "model.skops"


METRICS_FILE = "metrics.json"


CONFUSION_PNG = "confusion_matrix.png"


EVAL_PREDICTIONS = "eval_predictions.parquet"


MODEL_KIND = "embedkit-classifier"


# 2: the manifest lists every file as {sha256, bytes} (the artefact protocol); 1 listed bare sha256 strings.
MODEL_FORMAT_VERSION = 2


LABEL_TYPES = ("int", "bool", "str")


# skops trusts scikit-learn's estimators, numpy and builtins by itself. These are the only other types our
# pipelines contain (the MLP keeps its optimizer state). Anything else in a model file is refused on load.
TRUSTED_EXTRA_TYPES = (
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
)


def _write_model_dir(
    stage: artefact.Staging,
    estimator,
    data: TrainingData,
    metrics: dict,
    evaluated: np.ndarray,
    eval_pred: np.ndarray,
    fold: np.ndarray,
) -> None:
    """Write every file of the model into the staging directory, then seal it with the manifest."""
    from ..light_imports import skops_io

    sio = skops_io()

    with open(stage.path(MODEL_FILE), "wb") as f:
        sio.dump(estimator, f)
    stage.path(METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    if len(evaluated):
        columns = {
            "id": data.ids.take(pa.array(evaluated)),
            "label": pa.array(data.y[evaluated].tolist()),
            "predicted": pa.array(eval_pred[evaluated].tolist()),
        }
        if metrics["evaluation"]["mode"] == "cv":
            columns["fold"] = pa.array(fold[evaluated])
        pq.write_table(pa.table(columns), stage.path(EVAL_PREDICTIONS))
        ev = metrics["evaluation"]
        evaluation = f"{ev['folds']}-fold CV" if ev["mode"] == "cv" else "hold-out"
        title = f"{metrics['classifier']}, {evaluation}: accuracy {metrics['accuracy']:.3f}"
        plot_confusion_matrix(
            metrics["confusion_matrix"]["matrix"], metrics["classes"], stage.path(CONFUSION_PNG), title
        )
    column_config = data.features.column_config(data.column)
    inputs = data.features.input_columns()
    stage.seal(
        {
            "format_version": MODEL_FORMAT_VERSION,
            "classifier": metrics["classifier"],
            "options": metrics["options"],
            **({"search": metrics["search"]} if "search" in metrics else {}),
            "classes": metrics["classes"],
            "label_column": metrics["label_column"],
            "label_type": "int" if data.y.dtype.kind in "iu" else "bool" if data.y.dtype.kind == "b" else "str",
            "column": data.column,
            # How the training text was read, so predict reads new raw text the same way unless told otherwise.
            "text_column": inputs["text"],
            "id_column": inputs["id"],
            "dim": int(data.X.shape[1]),
            "extract_config": column_config.to_dict(),
            "features_meta": {k: v for k, v in data.features.meta.items() if k != "config"},
            "versions": library_versions("scikit-learn", "skops"),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    )  # the manifest, with the sha256 of every file above, is written last


def describe_model(model_dir: str | Path) -> dict[str, Any]:
    """What ``embedkit info MODEL_DIR`` prints: the classifier, its classes and settings, and the metrics of its
    evaluation (per group too, when trained with ``--group-column``). Every file is verified; nothing is unpickled.
    """
    model_dir = Path(model_dir)
    opened = _open_model_dir(model_dir)
    manifest = opened.manifest
    metrics = artefact.parse_json(opened.path(METRICS_FILE).read_bytes(), where=model_dir / METRICS_FILE)
    if not isinstance(metrics, dict):
        raise InputError(f"{model_dir / METRICS_FILE} is not a JSON object; the model is corrupt")
    return {
        "path": str(model_dir),
        "classifier": manifest["classifier"],
        "classes": manifest["classes"],
        "label_column": manifest["label_column"],
        "column": manifest["column"],
        "text_column": manifest.get("text_column"),
        "id_column": manifest.get("id_column"),
        "dim": manifest["dim"],
        "options": manifest.get("options", {}),
        "config": manifest["extract_config"],
        "created_at": manifest.get("created_at"),
        "metrics": {k: v for k, v in metrics.items() if k not in ("confusion_matrix", "per_class")},
    }


def model_info_lines(info: dict[str, Any]) -> list[str]:
    """``describe_model``'s dict as the lines ``embedkit info MODEL_DIR`` prints."""
    m, classes = info["metrics"], info["classes"]
    shown = ", ".join(map(str, classes[:10])) + (", ..." if len(classes) > 10 else "")
    lines = [
        f"model     {info['path']} (classifier, created {info['created_at']})",
        f"predicts  {info['label_column']!r}: {len(classes)} classes ({shown})",
        f"from      column {info['column']!r} ({info['dim']}-d), settings "
        + ", ".join(f"{k}={v}" for k, v in info["config"].items() if k != "trust_remote_code"),
        f"estimator {info['classifier']}: " + ", ".join(f"{k}={v}" for k, v in info["options"].items()),
    ]
    if info.get("text_column"):
        ids = f"ids from {info['id_column']!r}" if info.get("id_column") else "ids numbered by row"
        lines.append(f"reads     raw text from column {info['text_column']!r}, {ids} (predict's defaults)")
    if chosen_note(m):
        lines.append(f"chosen    {chosen_note(m)}")
    ev = m.get("evaluation", {})
    if ev.get("mode") in ("cv", "holdout") and "accuracy" in m:
        lines.append(f"evaluated {ev['mode']}: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}")
    else:
        lines.append("evaluated not evaluated")
    if ev and "fit_rows" in m:
        lines.append(f"saved     {fitted_on(m)}")
    if m.get("groups"):
        from ..audit.groups import format_groups  # the audit package loads torch: only when there are groups

        lines.append(f"per group of {m['group_column']!r}:\n" + format_groups(m["groups"]))
    return lines


def _open_model_dir(model_dir: Path) -> artefact.Artefact:
    """The model directory with every file verified and every manifest field the loaders use checked."""
    try:
        opened = artefact.open_dir(model_dir, manifest_name=MANIFEST, what="classifier model")
    except InputError:
        _refuse_older_format(model_dir)
        raise
    check_manifest(opened.manifest, model_dir / MANIFEST)
    return opened


def _refuse_older_format(model_dir: Path) -> None:
    """InputError saying "train again" for a model written before verified manifests (format 1), else nothing.

    Format 1 manifests list bare checksums, which the artefact reader refuses as malformed; a user deserves to
    hear that the model is merely old.
    """
    path = model_dir / MANIFEST
    try:
        if path.is_symlink() or path.stat().st_size > artefact.MAX_MANIFEST_BYTES:
            return
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return
    if isinstance(manifest, dict) and manifest.get("kind") == MODEL_KIND and manifest.get("format_version") == 1:
        raise InputError(
            f"{model_dir} was written by an older embedkit (model format 1, without verified file "
            "sizes); train it again with this version"
        )


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


# Stored extraction settings: the type of every field a reader passes on (ExtractConfig checks the values).
_SETTING_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "revision": (str, type(None)),
    "max_length": (int, type(None)),
    "long_text": (str,),
    "stride": (int, type(None)),
    "normalize": (bool,),
    "dtype": (str,),
    "trust_remote_code": (bool,),
    "backend": (str,),
}


def _check_settings(value: Any) -> str | None:
    """What is wrong with stored extraction settings, or None."""
    if not isinstance(value, dict):
        return f"must be an object of extraction settings, got {type(value).__name__}"
    try:  # first, so ExtractConfig's own words name a bad value wherever it checks one
        ExtractConfig.from_dict(value)
    except (ConfigError, TypeError, ValueError) as exc:
        return f"is not valid: {exc}"
    # What ExtractConfig's constructor converts instead of refusing ("2" -> 2, a single name -> a list) is still
    # not what train wrote: refused here, since a converted value may not describe the stored vectors.
    for key, types in _SETTING_TYPES.items():
        if key in value and (not isinstance(value[key], types) or (bool not in types and isinstance(value[key], bool))):
            return f"setting {key!r} has a wrong type ({type(value[key]).__name__})"
    for key, kind in (("layers", _is_int), ("pooling", lambda v: isinstance(v, str))):
        items = value.get(key)
        if key in value and (not isinstance(items, list) or not items or not all(kind(v) for v in items)):
            return f"setting {key!r} must be a non-empty list of {'integers' if key == 'layers' else 'names'}"
    return None


def check_manifest(manifest: dict[str, Any], where: Path) -> None:
    """Check every field of a model manifest the loader and ``predict`` use; InputError naming the first bad one.

    The manifest is read from a file anyone may have edited: a wrong value must be a clean "corrupt model" message
    (exit 3), never a crash deeper in, and never a value that changes what code runs.
    """

    def bad(name: str, problem: str) -> InputError:
        return InputError(
            f"{where}: field {name!r} {problem}; the model directory is corrupt or was edited by hand (train it again)"
        )

    if manifest.get("kind") != MODEL_KIND or manifest.get("format_version") != MODEL_FORMAT_VERSION:
        raise InputError(
            f"{where.parent}: unsupported model format (kind {manifest.get('kind')!r}, version "
            f"{manifest.get('format_version')!r}; this embedkit reads {MODEL_KIND!r} version "
            f"{MODEL_FORMAT_VERSION})"
        )
    if MODEL_FILE not in manifest["files"]:
        raise bad("files", f"does not list {MODEL_FILE}")
    if manifest.get("classifier") not in CLASSIFIERS:
        raise bad("classifier", f"is {manifest.get('classifier')!r}, not one of {', '.join(CLASSIFIERS)}")
    for name in ("label_column", "column"):
        if not isinstance(manifest.get(name), str) or not manifest[name]:
            raise bad(name, "must be a non-empty string")
    dim = manifest.get("dim")
    if not _is_int(dim) or dim < 1:
        raise bad("dim", f"must be a positive integer, got {dim!r}")
    label_type = manifest.get("label_type")
    if label_type not in LABEL_TYPES:
        raise bad("label_type", f"is {label_type!r}, not one of {', '.join(LABEL_TYPES)}")
    classes = manifest.get("classes")
    kind = {"int": _is_int, "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str)}[label_type]
    if not isinstance(classes, list) or len(classes) < 2 or not all(kind(c) for c in classes):
        raise bad("classes", f"must be a list of at least two {label_type} labels (label_type {label_type!r})")
    if len(set(classes)) != len(classes):
        raise bad("classes", "repeats a label")
    problem = _check_settings(manifest.get("extract_config"))
    if problem:
        raise bad("extract_config", problem)
    for name in ("text_column", "id_column"):  # absent in models trained before they were recorded
        if manifest.get(name) is not None and (not isinstance(manifest[name], str) or not manifest[name]):
            raise bad(name, "must be a non-empty string or null")
    if "features_meta" in manifest and not isinstance(manifest["features_meta"], dict):
        raise bad("features_meta", "must be an object")


def _check_estimator(estimator: Any, manifest: dict[str, Any], where: Path) -> None:
    """The loaded pipeline must be the one the manifest describes (its classes and input width)."""
    classes = [_jsonable(c) for c in getattr(estimator, "classes_", [])]
    if classes != manifest["classes"]:
        raise InputError(
            f"{where}: field 'classes' ({manifest['classes']!r}) differs from the model's own classes "
            f"({classes!r}); the model directory is corrupt or was edited by hand"
        )
    width = getattr(estimator, "n_features_in_", None)
    if width is not None and width != manifest["dim"]:
        raise InputError(
            f"{where}: field 'dim' ({manifest['dim']}) differs from the {width} dimensions the model "
            "was fitted on; the model directory is corrupt or was edited by hand"
        )
