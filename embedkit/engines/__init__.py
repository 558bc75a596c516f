"""Engines of the embed stage: what turns each part's texts into vectors for the one driver in ``embedkit.embed``.

An engine does the model work and nothing else: the driver reads the input, cuts it into parts, builds the
output rows (statuses included), commits, resumes and merges, whichever engine runs. ``local`` (the default)
runs the model in this process; ``ray`` (:class:`embedkit.engines.ray.RayEngine`) on the actors of a Ray
cluster. Ray is an optional dependency (``pip install 'embedkit[ray]'``), so nothing here imports it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Generator, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import ExtractConfig
    from ..extract import EncodeResult, Extractor
    from ..extract.extractor import ProgressFn
    from ..spec import Runtime

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
    def load(self, config: ExtractConfig | None, runtime: Runtime) -> Extractor:
        """Load the model here, checking the settings; the returned extractor's config and facts go in the output."""

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

    def load(self, config: ExtractConfig | None, runtime: Runtime) -> Extractor:
        if self.extractor is None:
            from ..extract import Extractor

            self.extractor = Extractor(
                config, device=runtime.device, batch_tokens=runtime.batch_tokens, threads=runtime.threads
            )
        return self.extractor

    def encode(
        self, parts: Iterable[Part], progress: ProgressFn | None = None
    ) -> Generator[tuple[int, EncodeResult], None, None]:
        assert self.extractor is not None, "load() first"
        for index, texts in parts:
            yield index, self.extractor.encode(texts, progress=progress)


__all__ = ["DEFAULT_PART_ROWS", "ENGINES", "Engine", "LocalEngine", "Part"]
