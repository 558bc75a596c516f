"""embedkit: hidden-state features from transformer language models, done right for GPT-2."""

from .config import DEFAULT_MODEL, POOLING_MODES, ExtractConfig
from .errors import (
    ConfigError,
    EmbedkitError,
    IncompatibleError,
    InputError,
    ModelLoadError,
    OutputError,
)
from .extract import EncodeResult, Extractor

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "POOLING_MODES",
    "ConfigError",
    "EmbedkitError",
    "EncodeResult",
    "ExtractConfig",
    "Extractor",
    "IncompatibleError",
    "InputError",
    "ModelLoadError",
    "OutputError",
    "__version__",
]
