"""The command lines that reproduce the probe's best pair: ``embedkit embed`` then ``embedkit train``."""

from __future__ import annotations

import shlex
from pathlib import Path

from ..config import ExtractConfig


def embed_command(
    input: str | Path,
    config: ExtractConfig,
    layer: int,
    pooling: str,
    *,
    label_column: str,
    text_column: str = "text",
    id_column: str | None = None,
    fmt: str | None = None,
    output: str = "features.parquet",
) -> str:
    """The ``embedkit embed`` command line that writes the features of one (layer, pooling) pair.

    ``config`` is the extraction config as the user gave it (before the model resolved it), so only the
    settings they chose appear; the model's own defaults fill in the rest exactly as they did for the probe.
    """
    args = ["embedkit", "embed", str(input), "-o", output, "--model", config.model]
    if config.revision:
        args += ["--revision", config.revision]
    args += ["--text-column", text_column]
    if id_column:
        args += ["--id-column", id_column]
    if fmt:
        args += ["--format", fmt]
    args += ["--keep", label_column, "--layer", str(layer), "--pooling", pooling]
    if config.max_length is not None:
        args += ["--max-length", str(config.max_length)]
    if config.long_text != "truncate":
        args += ["--long-text", config.long_text]
    if config.stride is not None:
        args += ["--stride", str(config.stride)]
    if config.trust_remote_code:
        args.append("--trust-remote-code")
    return shlex.join(args)


def train_command(label_column: str, cv: int, seed: int, features: str = "features.parquet") -> str:
    """The ``embedkit train`` command whose cross-validation gives the probe's score on those features."""
    return shlex.join(
        [
            "embedkit",
            "train",
            features,
            "--label-column",
            label_column,
            "--cv",
            str(cv),
            "--seed",
            str(seed),
            "-o",
            "model",
        ]
    )
