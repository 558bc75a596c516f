"""What to read and how to run: the two small value objects every stage that embeds text is given.

``InputSpec`` names an input and its columns; ``Runtime`` says where and how the model runs. They replace the
dozen keyword arguments that used to travel side by side through ``embed_file``, the engines and the pipeline,
so a new setting is added in one place. Both are frozen: a stage cannot change what its caller asked for.

What defines the vectors themselves (model, layers, pooling, storage dtype, backend) is ``ExtractConfig``: it
is recorded in every artefact and checked on reuse, which run-time choices (device, threads) never are.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import ExtractConfig
    from .extract import Extractor
    from .sources import Source


def _given(values: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments a caller set: None (and an empty ``keep``) is the keyword API's "not given"."""
    return {k: v for k, v in values.items() if v is not None and not (k == "keep" and len(v) == 0)}


@dataclass(frozen=True)
class InputSpec:
    """An input file (or directory, or glob) and the columns to read from it.

    Args:
        path: file, directory or glob.
        format: csv, tsv, jsonl, parquet or txt [default: from the extension].
        text_column: the column holding the text; None (predict, search) means the one the artefact was made
            from.
        id_column: the column passed through as ``id`` [default: the row number].
        keep: other columns passed through unchanged.
        keep_text: store the text column too (under its own name), so results can show the text.
    """

    path: str | Path
    format: str | None = None
    text_column: str | None = "text"
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
        text = self.text_column
        keep_text = self.keep_text and text is not None and text not in self.keep and not is_output_column(text)
        return (*((text,) if keep_text and text is not None else ()), *self.keep)

    @classmethod
    def of(cls, input: InputSpec | str | Path, defaults: dict[str, Any] | None = None, **columns: Any) -> InputSpec:
        """``input`` as a spec, for functions that take a spec or a path with column keywords (the older API).

        A path gets ``defaults`` (the function's own, e.g. ``keep_text=False``), then the keywords the caller set;
        a spec keeps its own values except where a keyword was set. A keyword left None is not set.
        """
        spec = input if isinstance(input, InputSpec) else cls(input, **(defaults or {}))
        given = _given(columns)
        return dataclasses.replace(spec, **given) if given else spec

    def source(self) -> Source:
        """Open the input: files and columns are checked now (InputError, ConfigError)."""
        from .sources import Source

        return Source(
            self.path,
            text_column=self.text_column or "text",
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

    @classmethod
    def of(cls, runtime: Runtime | None = None, **settings: Any) -> Runtime:
        """``runtime`` [default: ``Runtime()``] with the keyword arguments a caller set (None: not set) put over it,
        for functions that take a runtime and the older keywords (``progress=False``)."""
        given = _given(settings)
        return dataclasses.replace(runtime or cls(), **given) if given else (runtime or cls())

    def extractor(self, config: ExtractConfig | None = None) -> Extractor:
        """Load ``config``'s model on this device, with this batch size and these threads."""
        from .extract import Extractor

        return Extractor(config, device=self.device, batch_tokens=self.batch_tokens, threads=self.threads)


__all__ = ["InputSpec", "Runtime"]
