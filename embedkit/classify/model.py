"""A loaded model directory (``ClassifierModel``): the verified, safely loaded pipeline and the settings to embed
new text."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import ExtractConfig
from ..errors import IncompatibleError, InputError
from ..spec import Runtime
from .files import MANIFEST, MODEL_FILE, TRUSTED_EXTRA_TYPES, _check_estimator, _open_model_dir
from .metrics import _jsonable

if TYPE_CHECKING:  # torch loads only when text is embedded
    from ..extract import Extractor


@dataclass
class ClassifierModel:
    """A loaded model directory: the fitted pipeline plus everything needed to embed new text for it."""

    path: Path
    estimator: Any
    manifest: dict[str, Any]
    trust_remote_code: bool = False  # the caller's decision; the manifest's own is never used
    config: ExtractConfig = field(init=False)

    def __post_init__(self) -> None:
        features_meta = self.manifest.get("features_meta")
        model = features_meta.get("model") if isinstance(features_meta, dict) else None
        self.config = ExtractConfig.from_stored(
            self.manifest.get("extract_config"),
            origin=str(self.path / MANIFEST),
            trust_remote_code=self.trust_remote_code,
            model=model,
        )

    @property
    def classes(self) -> list:
        return [_jsonable(c) for c in self.estimator.classes_]

    @property
    def has_proba(self) -> bool:
        return hasattr(self.estimator, "predict_proba")

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def text_column(self) -> str:
        """The column the training text was read from (``text`` for models that did not record it)."""
        return self.manifest.get("text_column") or "text"

    @property
    def id_column(self) -> str | None:
        return self.manifest.get("id_column")

    def predict_vectors(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels (and class probabilities in ``classes`` order, when the classifier has them) for vectors."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise IncompatibleError(f"vectors have shape {X.shape}; this model expects {self.dim} dimensions")
        if not np.isfinite(X).all():
            bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
            raise InputError(
                f"{len(bad)} vector(s) hold NaN or infinity (first at row {bad[0]}); no class can be predicted for them"
            )
        if len(X) == 0:
            return np.empty(0, dtype=object), (np.empty((0, len(self.classes))) if self.has_proba else None)
        proba = self.estimator.predict_proba(X) if self.has_proba else None
        labels = self.estimator.classes_[np.argmax(proba, axis=1)] if proba is not None else self.estimator.predict(X)
        return labels, proba

    def extractor(self, runtime: Runtime | None = None) -> Extractor:
        """An Extractor with the training vectors' settings, run on ``runtime``'s device, batch size and threads."""
        extractor = (runtime or Runtime()).extractor(self.config)
        if extractor.config.vector_settings() != self.config.vector_settings():
            raise IncompatibleError(
                f"the model in {self.config.model} now resolves to other settings than at training time: "
                f"{_differences(self.config.vector_settings(), extractor.config.vector_settings())}"
            )
        return extractor

    def predict_texts(self, texts: list[str], extractor=None) -> tuple[np.ndarray, np.ndarray | None]:
        """Embed ``texts`` with the stored settings and classify them (an InputError names any bad text)."""
        extractor = extractor or self.extractor()
        return self.predict_vectors(extractor.embed(list(texts)))


def _differences(expected: dict[str, Any], found: dict[str, Any]) -> str:
    keys = [k for k in dict.fromkeys([*expected, *found]) if expected.get(k) != found.get(k)]
    return "; ".join(f"{k}: model has {expected.get(k)!r}, input has {found.get(k)!r}" for k in keys)


def load_model(model_dir: str | Path, *, trust_remote_code: bool = False) -> ClassifierModel:
    """Load a model directory written by ``train``, verifying its manifest, checksums and stored types.

    Raises:
        InputError: not a complete model directory; a file missing, symlinked or not matching the manifest's
            sha256; a manifest field with a wrong type or value (naming it); types skops must not load.
    """
    from ..light_imports import skops_io

    sio = skops_io()

    model_dir = Path(model_dir)
    opened = _open_model_dir(model_dir)
    manifest = opened.manifest
    model_file = opened.path(MODEL_FILE)
    try:
        untrusted = sio.get_untrusted_types(file=model_file)
    except Exception as exc:  # skops raises assorted errors on a damaged archive
        raise InputError(f"{model_file} is not a readable skops file: {exc}") from exc
    unknown = sorted(set(untrusted) - set(TRUSTED_EXTRA_TYPES))
    if unknown:
        raise InputError(
            f"{model_file} contains types embedkit does not load (they could run code): {', '.join(unknown)}"
        )
    try:
        estimator = sio.load(model_file, trusted=list(untrusted))
        _check_estimator(estimator, manifest, model_dir / MANIFEST)  # its InputError reads "could not be loaded: ..."
    except Exception as exc:
        raise InputError(f"{model_file} could not be loaded: {exc}") from exc
    return ClassifierModel(path=model_dir, estimator=estimator, manifest=manifest, trust_remote_code=trust_remote_code)
