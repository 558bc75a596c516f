"""Engines of the embed stage: what turns texts into vectors for the one driver in ``embedkit.embed``.

``local`` (the default, :class:`LocalEngine`) does the model work and nothing else: the driver reads the
input, cuts it into parts, builds the output rows (statuses included), commits, resumes and merges. ``ray``
(:class:`embedkit.engines.ray.RayEngine`) is a :class:`JobEngine`: on a cluster the driver must carry no data,
so the workers read, embed and write shards themselves, with the driver's own functions for reading
(``Source``), rows and statuses (``embed.build_table``) and batching (``Extractor``). Ray is an optional
dependency (``pip install 'embedkit[ray]'``), so nothing here imports it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Generator, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from ..config import ExtractConfig
    from ..embed import EmbedSummary
    from ..extract import EncodeResult, Extractor
    from ..extract.extractor import ProgressFn
    from ..spec import InputSpec, Runtime

ENGINES = ("local", "ray")
# Rows per committed part. Also the window inside which texts are length-sorted: large enough that batches
# are well packed, small enough that a kill loses little work and memory stays flat.
DEFAULT_PART_ROWS = 4096

Part = tuple[int, list[object]]  # (part index, its texts in row order; None for a row that never reaches the model)


class Engine(ABC):
    """Turns parts of texts into vectors. The driver calls ``check``, ``load``, then ``encode`` once per run."""

    #: Parts come back in the order they were given (and are committed under consecutive numbers).
    ordered = True
    default_part_rows = DEFAULT_PART_ROWS
    #: What a resumed run must share with the partial one besides settings and input (parts numbered apart).
    fingerprint: dict[str, Any] = {}

    def check(self, runtime: Runtime) -> None:  # noqa: B027  (optional hook: most engines accept any runtime)
        """Refuse contradictory run-time options before anything is read or loaded (ConfigError)."""

    @abstractmethod
    def load(self, config: ExtractConfig | None, runtime: Runtime, job_tokens: int | None = None) -> Extractor:
        """Load the model here, checking the settings; the returned extractor's config and facts go in the output.

        ``job_tokens``: the job's size, roughly, if known (backends auto and bf16 measure only for large jobs).
        """

    @abstractmethod
    def encode(
        self, parts: Iterable[Part], progress: ProgressFn | None = None
    ) -> Generator[tuple[int, EncodeResult], None, None]:
        """Embed each part; yields ``(part index, result)``, reading ``parts`` only as far as the work needs.

        ``progress(texts, tokens)`` is called as texts are finished. The driver closes the iterator when it stops
        early, so an engine cleans up in ``finally``.
        """


class LocalEngine(Engine):
    """The model in this process, one part after the other. ``extractor`` reuses a model already loaded."""

    def __init__(self, extractor: Extractor | None = None) -> None:
        self.extractor = extractor

    def load(self, config: ExtractConfig | None, runtime: Runtime, job_tokens: int | None = None) -> Extractor:
        if self.extractor is None:
            from ..extract import Extractor

            self.extractor = Extractor(
                config,
                device=runtime.device,
                batch_tokens=runtime.batch_tokens,
                threads=runtime.threads,
                job_tokens=job_tokens,
            )
        return self.extractor

    def encode(
        self, parts: Iterable[Part], progress: ProgressFn | None = None
    ) -> Generator[tuple[int, EncodeResult], None, None]:
        assert self.extractor is not None, "load() first"
        for index, texts in parts:
            yield index, self.extractor.encode(texts, progress=progress)


class JobEngine(ABC):
    """An engine that runs the whole embed job where the data is: ``embed.embed`` hands it the job and returns
    its summary. It reuses the driver's reading, row and batching functions, so the output rows are the same."""

    @abstractmethod
    def run(
        self,
        spec: InputSpec,
        output: Path,
        config: ExtractConfig | None,
        runtime: Runtime,
        *,
        resume: bool,
        overwrite: bool,
        wait: bool,
        strict: bool,
        part_rows: int | None,
    ) -> EmbedSummary:
        """Embed every row of ``spec`` into ``output``, with ``embed.embed``'s meaning of every argument."""


__all__ = ["DEFAULT_PART_ROWS", "ENGINES", "Engine", "JobEngine", "LocalEngine", "Part"]
