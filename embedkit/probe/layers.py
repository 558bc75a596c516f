"""Which layers to probe: ``"all"`` or a list of indices, resolved against the model's depth."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..config import ExtractConfig
from ..errors import ConfigError

ALL_LAYERS = "all"


def parse_layers(values: str | int | Sequence[str | int]) -> str | tuple[int, ...]:
    """``"all"`` or layer indices from a string (``"0,3,6,-1"``), an int or a list of either."""
    if isinstance(values, (str, int)):
        values = [values]
    items = [
        v.strip() if isinstance(v, str) else v
        for value in values
        for v in (str(value).split(",") if isinstance(value, str) else [value])
    ]
    items = [v for v in items if v != ""]
    if not items:
        raise ConfigError("--layers needs 'all' or a list of layer indices such as 0,3,6,-1")
    if any(isinstance(v, str) and v.lower() == ALL_LAYERS for v in items):
        if len(items) > 1:
            raise ConfigError(f"--layers takes 'all' or a list of indices, not both: {', '.join(map(str, items))}")
        return ALL_LAYERS
    try:
        return tuple(int(v) for v in items)
    except ValueError:
        raise ConfigError(
            f"--layers: {', '.join(map(str, items))} is not 'all' or a list of integers such as 0,3,6,-1"
        ) from None


def model_layer_count(config: ExtractConfig) -> int:
    """Transformer blocks of ``config.model``, read from its config.json (cheap: no weights are loaded)."""
    from transformers import AutoConfig

    from ..extract.model import _from_pretrained

    name = str(Path(config.model).expanduser())
    model_config = _from_pretrained(
        AutoConfig, name, revision=config.revision, trust_remote_code=config.trust_remote_code
    )
    return int(model_config.num_hidden_layers)


def probe_config(config: ExtractConfig, layers: str | Sequence[int]) -> ExtractConfig:
    """``config`` with ``layers`` filled in: ``"all"`` = 0 (embeddings) .. every block's output."""
    layers = parse_layers(layers)
    if layers == ALL_LAYERS:
        layers = tuple(range(model_layer_count(config) + 1))
    return config.replace(layers=layers)
