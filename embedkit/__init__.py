"""embedkit: hidden-state features from transformer language models, done right for GPT-2.

The public API is re-exported here. Heavy modules (torch, scikit-learn, FAISS) load on first use, so
``import embedkit`` and commands that never run a model (``embedkit info``, ``cluster``, ``index build``) stay fast.
"""

from __future__ import annotations

from .config import DEFAULT_MODEL, POOLING_MODES, ExtractConfig
from .errors import (
    BusyError,
    ConfigError,
    EmbedkitError,
    IncompatibleError,
    InputError,
    ModelLoadError,
    OutputError,
)
from .lazy import lazy_exports
from .spec import InputSpec, Runtime

__version__ = "0.1.0"

_LAZY = {
    "Extractor": "embedkit.extract",
    "EncodeResult": "embedkit.extract",
    "embed_file": "embedkit.embed",
    "open_features": "embedkit.store",
    "train": "embedkit.classify",
    "predict_file": "embedkit.classify",
    "HiddenStateEmbedder": "embedkit.estimator",
    "cluster_file": "embedkit.cluster",
    "dedup_file": "embedkit.dedup",
    "build_index": "embedkit.index",
    "Index": "embedkit.index",
    "probe_file": "embedkit.probe",
    "run_pipeline": "embedkit.pipeline",
    "audit_model": "embedkit.audit",
    "audit_features": "embedkit.audit",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "BusyError",
    "DEFAULT_MODEL",
    "POOLING_MODES",
    "ConfigError",
    "EmbedkitError",
    "ExtractConfig",
    "IncompatibleError",
    "InputSpec",
    "InputError",
    "ModelLoadError",
    "OutputError",
    "Runtime",
    "__version__",
    *_LAZY,
]
