"""A features cache keyed by fingerprint: pipelines that embed the same input with the same settings embed it once.

The key is a digest of what decides the features file's content: the input's bytes (not its path: a copy of a
file is the same input), the columns read and stored, the vector settings and the model's files (a checkpoint
replaced at the same path is another model). Run-time choices (device, threads, batch size) are not in it.

Entries are ordinary features files in one directory, written by the embed driver itself (under the entry's
lock, atomically; a killed write resumes). A pipeline's ``features.parquet`` is then a hard link to its entry
(a copy where links are not possible), landed atomically under that file's own lock; writers never change a
file in place, so a later ``--overwrite`` of either never alters the other.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artefact import _link_or_copy, writing_file
from .config import ExtractConfig
from .errors import OutputError
from .spec import InputSpec, Runtime
from .store import is_features_file

log = logging.getLogger(__name__)

CACHE_DIR = ".features-cache"


def cache_key(
    input_digests: list[str], spec: InputSpec, config: ExtractConfig, model_files: list[dict[str, Any]] | None
) -> str:
    """The fingerprint of a features file: input content, columns, vector settings, model files."""
    what = {
        "input": input_digests,
        "format": spec.format,
        "columns": {"text": spec.text_column, "id": spec.id_column, "stored": list(spec.stored_columns)},
        "settings": config.vector_settings(),
        "model_files": model_files,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class CachedFeatures:
    """The outcome of :func:`cached_features`: where the features are and whether they were embedded now."""

    output: Path
    entry: Path
    reused: bool
    embedded_lines: list[str]

    def summary_lines(self) -> list[str]:
        if not self.reused:
            return [*self.embedded_lines, f"-> {self.output} (cached for pipelines with the same input and settings)"]
        return [f"reused features embedded earlier from the same input and settings ({self.entry}) -> {self.output}"]


def cached_features(
    key: str,
    cache_dir: Path,
    output: Path,
    spec: InputSpec,
    config: ExtractConfig,
    runtime: Runtime,
    *,
    refresh: bool = False,
) -> CachedFeatures:
    """Make ``output`` the features of ``spec`` under ``config``: from the cache entry ``key``, embedding it first
    if no earlier run (of any pipeline sharing ``cache_dir``) has, or if ``refresh`` (``embedkit run --force``)."""
    from .embed import embed

    entry = cache_dir / f"{key}.parquet"
    reused, lines = True, []
    if refresh or not is_features_file(entry):
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the features cache {cache_dir}: {exc}") from exc
        try:
            # resume: a write killed earlier continues; wait: another pipeline embedding the same entry now
            # finishes it first, and this one then finds it complete.
            embedded = embed(spec, entry, config, runtime, resume=not refresh, overwrite=refresh, wait=True)
            lines = embedded.summary_lines()
            reused = False
        except OutputError:
            if refresh or not is_features_file(entry):  # not just "exists": another run finished it under the lock
                raise
    else:
        log.info("features cache hit: %s", entry)
    with writing_file(output, overwrite=True) as tmp:
        tmp.unlink()
        _link_or_copy(entry, tmp)
    return CachedFeatures(output=output, entry=entry, reused=reused, embedded_lines=lines)


__all__ = ["CACHE_DIR", "CachedFeatures", "cache_key", "cached_features"]
