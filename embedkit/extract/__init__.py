"""Feature extraction: model loading, batching, pooling, long-text windows, the Extractor."""

from .extractor import DEFAULT_BATCH_TOKENS, EncodeResult, Extractor, resolve_config
from .model import LoadedModel, load_model
from .pooling import pool
from .texts import STATUSES

__all__ = ["DEFAULT_BATCH_TOKENS", "EncodeResult", "Extractor", "LoadedModel", "STATUSES", "load_model", "pool", "resolve_config"]
