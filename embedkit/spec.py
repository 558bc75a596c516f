"""What to read and how to run: the two small value objects every stage that embeds text is given.

``InputSpec`` names an input and its columns; ``Runtime`` says where and how the model runs. They replace the
dozen keyword arguments that used to travel side by side through ``embed_file``, the engines and the pipeline,
so a new setting is added in one place. Both are frozen: a stage cannot change what its caller asked for.

What defines the vectors themselves (model, layers, pooling, storage dtype, backend) is ``ExtractConfig``: it
is recorded in every artefact and checked on reuse, which run-time choices (device, threads) never are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from .sources import Source


@dataclass(frozen=True)
class InputSpec:
    """An input file (or directory, or glob) and the columns to read from it.

    Args:
        path: file, directory or glob.
        format: csv, tsv, jsonl, parquet or txt [default: from the extension].
        text_column: the column holding the text.
        id_column: the column passed through as ``id`` [default: the row number].
        keep: other columns passed through unchanged.
        keep_text: store the text column too (under its own name), so results can show the text.
    """

    path: str | Path
    format: str | None = None
    text_column: str = "text"
    id_column: str | None = None
    keep: tuple[str, ...] = ()
    keep_text: bool = True

    def __post_init__(self) -> None:
        # Lists (the Python API, TOML) are accepted and stored as a tuple, so the spec stays hashable.
        object.__setattr__(self, "keep", tuple(self.keep))

    @property
    def stored_columns(self) -> tuple[str, ...]:
        """The input columns written to the output besides ``id``: the text first (when kept), then ``keep``."""
        from .sources import is_output_column

        # A text column named like one of embedkit's own (``status``) cannot be stored under its name: not kept.
        keep_text = self.keep_text and self.text_column not in self.keep and not is_output_column(self.text_column)
        text = (self.text_column,) if keep_text else ()
        return (*text, *self.keep)

    def source(self) -> Source:
        """Open the input: files and columns are checked now (InputError, ConfigError)."""
        from .sources import Source

        return Source(
            self.path,
            text_column=self.text_column,
            id_column=self.id_column,
            keep=self.stored_columns,
            fmt=self.format,
        )


@dataclass(frozen=True)
class Runtime:
    """Where and how the model runs; never recorded as a setting of the vectors.

    Args:
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        batch_tokens: padded tokens per forward pass [default: 512 on CPU, 65536 on CUDA].
        threads: CPU threads for torch [default: torch's].
        progress: draw a progress bar on stderr.
        verbose: let libraries (transformers, huggingface_hub) print their own warnings and bars.
    """

    device: str = "auto"
    batch_tokens: int | None = None
    threads: int | None = None
    progress: bool = True
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise ConfigError(f"batch_tokens must be at least 1, got {self.batch_tokens}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")


__all__ = ["InputSpec", "Runtime"]
