"""Feature extraction: model loading, batching, pooling, long-text windows, the Extractor.

Submodules that need torch load on first use, so the torch-free pieces (text checks, batching) stay light.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "DEFAULT_BATCH_TOKENS": "extractor",
    "EncodeResult": "extractor",
    "Extractor": "extractor",
    "resolve_config": "extractor",
    "LoadedModel": "model",
    "load_model": "model",
    "pool": "pooling",
    "STATUSES": "texts",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
