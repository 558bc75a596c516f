"""ExtractConfig: the one frozen object that says how vectors were made.

It travels inside the Parquet metadata (key ``embedkit``), so every later stage (predict, search, index)
embeds new text exactly as the stored features were embedded, without the user repeating a flag.
Runtime knobs that do not change the vectors (device, batch size, threads) are deliberately not in it.
"""

from __future__ import annotations

import dataclasses
import operator
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, InputError, choice_error

DEFAULT_MODEL = "openai-community/gpt2"
MODEL_ENV = "EMBEDKIT_MODEL"

POOLING_MODES = ("mean", "last", "max", "first", "weighted-mean")
LONG_TEXT_MODES = ("truncate", "chunk")
STORAGE_DTYPES = ("float32", "float16", "int8", "binary")  # encodings: embedkit/vectors.py
DEVICES = ("auto", "cpu", "cuda")
# How the forward pass runs. "torch" is exact (within float rounding of the reference); "int8" is dynamic int8
# quantisation of the linear layers (CPU only): faster, approximate (cosine >= 0.99 to torch), so it is part of
# the vector settings and travels in metadata. "bf16": bfloat16 linear layers on CPUs with native bf16 (cosine
# >= 0.9999 to torch), the fp32 path elsewhere (extract/bf16.py). "openvino" (exact) and "ort-int8" (approximate)
# run an ONNX export of the model in OpenVINO / ONNX Runtime (extract/runtime_backends.py; optional extras).
# "auto": torch or openvino, whichever measured faster on this machine (cached; extract/backend_choice.py); never
# recorded: the backend it ran on is.
BACKENDS = ("torch", "int8", "bf16", "openvino", "ort-int8", "auto")
# Backends whose vectors equal another's (the same fp32 arithmetic in another runtime, cosine >= 0.99999): when
# vectors are compared they count as that one, so features that auto ran on OpenVINO on one machine and on torch on
# another go in one index or classifier. Each is still recorded under its own name and re-embeds queries with it.
SAME_VECTORS = {"openvino": "torch"}


def default_model() -> str:
    """The model used when none is named: ``$EMBEDKIT_MODEL`` or GPT-2 small."""
    return os.environ.get(MODEL_ENV) or DEFAULT_MODEL


def _as_tuple(value: Any, name: str) -> tuple:
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        return (value,)  # one layer or pooling mode; its type is checked by the caller
    if isinstance(value, (dict, set, frozenset)):  # no order, or not a list of values at all
        raise ConfigError(f"{name} must be a list, got {type(value).__name__} {value!r}")
    return tuple(value)


def _as_int(value: Any, name: str) -> int:
    """An integer (numpy integers too); never a bool, float or string that merely converts to one."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ConfigError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None


def _check_str(value: Any, name: str, optional: bool = False) -> None:
    if not (isinstance(value, str) or (optional and value is None)):
        kind = "a string or null" if optional else "a string"
        raise ConfigError(f"{name} must be {kind}, got {type(value).__name__} {value!r}")


def _check_bool(value: Any, name: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {type(value).__name__} {value!r}")


def canonical_model(model: str) -> str:
    """A local model directory as an absolute, resolved path; anything else (a hub id) unchanged.

    Stored settings must name the same model whatever directory a later command runs in, so a path typed
    relative to one working directory (``../tiny``) never silently means another model elsewhere.
    Transformers loads an existing directory before trying the hub, so the check follows the same rule.
    """
    path = local_model_dir(model)
    return str(path) if path is not None else model


def local_model_dir(model: str) -> Path | None:
    """The resolved directory ``model`` names, or None when it names none (a hub id, a missing path)."""
    try:
        path = Path(model).expanduser()
        return path.resolve() if path.is_dir() else None
    except (OSError, ValueError, RuntimeError):  # too long for a path, a NUL byte, "~user" of no user: no directory
        return None


@dataclass(frozen=True)
class Provenance:
    """Where stored settings were read from, and what that artefact said about its model."""

    origin: str  # the artefact, as shown in messages ("f.parquet (embedkit metadata)", "ix/index.json")
    fingerprint: str | None = None  # the model fingerprint it recorded; None for artefacts older than the check
    asked_for_remote_code: bool = False  # it stored trust_remote_code = true, which is never used


@dataclass(frozen=True)
class ExtractConfig:
    """Settings that determine the vectors.

    Attributes:
        model: hub id or local directory of any Hugging Face ``AutoModel``.
        revision: hub revision (branch, tag or commit) or None.
        layers: hidden-state indices; 0 = embeddings, i = output of block i, last = after the final norm.
            Negative indices count from the end (-1 = last). Stored resolved (absolute) in metadata.
        pooling: one or more of ``POOLING_MODES``; every (layer, pooling) pair becomes a column.
        max_length: tokens per window; None = the model's limit (1,024 for GPT-2).
        long_text: ``truncate`` (record it) or ``chunk`` (overlapping windows, token-weighted combination).
        stride: tokens shared by consecutive windows in ``chunk`` mode; None = max_length // 8.
        normalize: L2-normalise every stored vector.
        dtype: storage dtype of the vectors: ``float32``, ``float16``, ``int8`` or ``binary`` (embedkit.vectors).
        trust_remote_code: allow a model's own Python code to run (off unless asked). Only the person running
            the command decides: a value read from an artefact is ignored (see ``from_stored``).
        backend: ``torch`` (exact), ``int8`` (dynamic int8 linear layers on CPU; approximate, faster) or ``bf16``
            (bf16 linear layers on CPUs with native bf16, else fp32; extract/bf16.py), ``openvino`` (OpenVINO fp32,
            exact) or ``ort-int8`` (ONNX Runtime dynamic int8; approximate): extract/runtime_backends.py. ``auto``:
            ``torch`` or ``openvino``, whichever measured faster here (extract/backend_choice.py); the one it ran on
            is what an extractor's config (and so the metadata) records.
        provenance: set by ``from_stored``: the artefact the settings came from, the model fingerprint it
            recorded (loading the model checks it is still that model) and whether it asked for remote code
            (ignored, and said so when the model is loaded). Not a setting: never compared nor written.
    """

    model: str = field(default_factory=default_model)
    revision: str | None = None
    layers: tuple[int, ...] = (-1,)
    pooling: tuple[str, ...] = ("mean",)
    max_length: int | None = None
    long_text: str = "truncate"
    stride: int | None = None
    normalize: bool = False
    dtype: str = "float32"
    trust_remote_code: bool = False
    backend: str = "torch"
    provenance: Provenance | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Accept lists, tuples and single values from callers, but keep the frozen object hashable and canonical.
        # Types are checked, not converted: a stored 1.5, true or "6" is a corrupt setting, not layer 1 or 6.
        object.__setattr__(self, "layers", tuple(_as_int(x, "layers") for x in _as_tuple(self.layers, "layers")))
        pooling = _as_tuple(self.pooling, "pooling")
        for p in pooling:
            _check_str(p, "pooling")
        object.__setattr__(self, "pooling", pooling)
        _check_str(self.model, "model")
        _check_str(self.revision, "revision", optional=True)
        for name in ("long_text", "dtype", "backend"):
            _check_str(getattr(self, name), name)
        for name in ("max_length", "stride"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _as_int(getattr(self, name), name))
        _check_bool(self.normalize, "normalize")
        _check_bool(self.trust_remote_code, "trust_remote_code")
        if not self.model:
            raise ConfigError("model must be a hub id or a local directory, got an empty string")
        object.__setattr__(self, "model", canonical_model(self.model))
        if not self.layers:
            raise ConfigError("at least one layer is needed")
        if not self.pooling:
            raise ConfigError("at least one pooling mode is needed")
        for p in self.pooling:
            if p not in POOLING_MODES:
                raise choice_error("pooling", p, POOLING_MODES)
        if len(set(self.pooling)) != len(self.pooling):
            raise ConfigError(f"pooling modes repeat: {', '.join(self.pooling)}")
        if self.long_text not in LONG_TEXT_MODES:
            raise choice_error("long-text mode", self.long_text, LONG_TEXT_MODES)
        if self.backend not in BACKENDS:
            raise choice_error("backend", self.backend, BACKENDS)
        if self.dtype not in STORAGE_DTYPES:
            raise choice_error("dtype", self.dtype, STORAGE_DTYPES)
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"max_length must be at least 2, got {self.max_length}")
        if self.stride is not None:
            if self.stride < 0:
                raise ConfigError(f"stride must be >= 0, got {self.stride}")
            if self.max_length is not None and self.stride >= self.max_length // 2:
                raise ConfigError(f"stride {self.stride} must be less than half of max_length {self.max_length}")

    @property
    def pairs(self) -> list[tuple[int, str]]:
        """Every (layer, pooling) pair, layer-major, in the order the columns are written."""
        return [(layer, pooling) for layer in self.layers for pooling in self.pooling]

    def column_names(self) -> list[str]:
        """Embedding column names: ``embedding`` for one pair, else ``embedding_l{layer}_{pooling}``."""
        if len(self.pairs) == 1:
            return ["embedding"]
        return [f"embedding_l{layer}_{pooling}" for layer, pooling in self.pairs]

    def replace(self, **changes: Any) -> ExtractConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("provenance")
        d["layers"] = list(self.layers)
        d["pooling"] = list(self.pooling)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExtractConfig:
        """Settings from a dict the caller vouches for (its own ``to_dict``); artefacts go through ``from_stored``."""
        unknown = sorted(set(data) - set(setting_names()))
        if unknown:
            raise ConfigError(f"unknown extraction setting(s): {', '.join(map(str, unknown))}")
        return cls(**data)

    @classmethod
    def from_stored(
        cls, data: Any, *, trust_remote_code: bool = False, origin: str, model: Any = None
    ) -> ExtractConfig:
        """Settings read from an artefact (features metadata, index.json, a model manifest, a pipeline file).

        The one place where stored settings become an ExtractConfig, so every reader gets the same rules:

        * Trust comes only from the person running the command: ``trust_remote_code`` is the caller's argument
          (``--trust-remote-code``), and a stored value is ignored (a warning saying how to opt in is logged if
          the model is loaded). An artefact is data; a shared file must never make a model's own code run.
        * A wrong type or unknown key is a corrupt artefact: InputError naming ``origin`` and the field.
        * ``model`` is the artefact's model block; its ``fingerprint`` (written since embedkit checks models)
          is kept in ``provenance`` so loading the model checks it is still the one the vectors came from.
        """
        if not isinstance(data, dict):
            raise InputError(
                f"{origin}: the stored extraction settings are missing or not a table "
                f"(got {type(data).__name__}); the artefact is corrupt or was not written by embedkit"
            )
        missing = [k for k in ("model", "layers", "pooling") if k not in data]
        if missing:  # every embedkit version wrote these; defaults would silently stand in for another model
            raise InputError(
                f"{origin}: the stored extraction settings lack {', '.join(missing)}; the artefact is "
                "corrupt or was not written by embedkit"
            )
        data = dict(data)
        stored_trust = data.pop("trust_remote_code", False) not in (False, None)
        fingerprint = model.get("fingerprint") if isinstance(model, dict) else None
        if fingerprint is not None and not isinstance(fingerprint, str):
            raise InputError(f"{origin}: model.fingerprint must be a string, got {type(fingerprint).__name__}")
        try:
            config = cls.from_dict(data)
        except ConfigError as exc:
            raise InputError(
                f"{origin}: invalid stored extraction setting: {exc} (a corrupt or hand-edited artefact; re-create it)"
            ) from exc
        return config.replace(
            trust_remote_code=bool(trust_remote_code), provenance=Provenance(origin, fingerprint, stored_trust)
        )

    def model_difference(self, other: ExtractConfig) -> str | None:
        """A note when both settings were read from artefacts that recorded different model fingerprints.

        Equal settings name the model by its path or id only; a checkpoint replaced at that path between two
        embeddings makes vectors that must not be mixed (added to one index, classified by one model).
        """
        mine, theirs = (c.provenance.fingerprint if c.provenance else None for c in (self, other))
        if mine and theirs and mine != theirs:
            return f"the model files at {self.model} differ (fingerprint {mine[:19]} vs {theirs[:19]})"
        return None

    def vector_settings(self) -> dict[str, Any]:
        """What must match for two sets of vectors to be comparable (everything but trust_remote_code; backends
        that make the same vectors count as one, SAME_VECTORS)."""
        d = self.to_dict()
        d.pop("trust_remote_code")
        d["backend"] = SAME_VECTORS.get(self.backend, self.backend)
        return d


def setting_names() -> list[str]:
    """The settings a dict, a pipeline's [extract] table or an artefact may hold."""
    return [f.name for f in dataclasses.fields(ExtractConfig) if f.name != "provenance"]
