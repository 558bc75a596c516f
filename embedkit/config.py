"""ExtractConfig: the one frozen object that says how vectors were made.

It travels inside the Parquet metadata (key ``embedkit``), so every later stage (predict, search, index)
embeds new text exactly as the stored features were embedded, without the user repeating a flag.
Runtime knobs that do not change the vectors (device, batch size, threads) are deliberately not in it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, choice_error

DEFAULT_MODEL = "openai-community/gpt2"
MODEL_ENV = "EMBEDKIT_MODEL"

POOLING_MODES = ("mean", "last", "max", "first", "weighted-mean")
LONG_TEXT_MODES = ("truncate", "chunk")
STORAGE_DTYPES = ("float32", "float16")
DEVICES = ("auto", "cpu", "cuda")
# How the forward pass runs. "torch" is exact (within float rounding of the reference); "int8" is dynamic int8
# quantisation of the linear layers (CPU only): faster, approximate (cosine >= 0.99 to torch), so it is part of
# the vector settings and travels in metadata.
BACKENDS = ("torch", "int8")


def default_model() -> str:
    """The model used when none is named: ``$EMBEDKIT_MODEL`` or GPT-2 small."""
    return os.environ.get(MODEL_ENV) or DEFAULT_MODEL


def _as_tuple(value: Any) -> tuple:
    if isinstance(value, (str, int)):
        return (value,)
    return tuple(value)


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
        dtype: storage dtype of the vectors, ``float32`` or ``float16``.
        trust_remote_code: allow a model's own Python code to run (off unless asked).
        backend: ``torch`` (exact) or ``int8`` (dynamic int8 linear layers on CPU; approximate, faster).
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

    def __post_init__(self) -> None:
        # Accept lists and single values from callers, but keep the frozen object hashable and canonical.
        object.__setattr__(self, "layers", tuple(int(x) for x in _as_tuple(self.layers)))
        object.__setattr__(self, "pooling", tuple(str(p) for p in _as_tuple(self.pooling)))
        if not self.model:
            raise ConfigError("model must be a hub id or a local directory, got an empty string")
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
                raise ConfigError(
                    f"stride {self.stride} must be less than half of max_length {self.max_length}"
                )

    @property
    def pairs(self) -> list[tuple[int, str]]:
        """Every (layer, pooling) pair, layer-major, in the order the columns are written."""
        return [(layer, pooling) for layer in self.layers for pooling in self.pooling]

    def column_names(self) -> list[str]:
        """Embedding column names: ``embedding`` for one pair, else ``embedding_l{layer}_{pooling}``."""
        if len(self.pairs) == 1:
            return ["embedding"]
        return [f"embedding_l{layer}_{pooling}" for layer, pooling in self.pairs]

    def replace(self, **changes: Any) -> "ExtractConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        d["pooling"] = list(self.pooling)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExtractConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown extraction setting(s): {', '.join(unknown)}")
        return cls(**data)

    def vector_settings(self) -> dict[str, Any]:
        """What must match for two sets of vectors to be comparable (everything but trust_remote_code)."""
        d = self.to_dict()
        d.pop("trust_remote_code")
        return d
