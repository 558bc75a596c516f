"""The part every resumable writer of one output shares: the output's lock, the job's name, the partial directory.

A features file (:class:`~embedkit.parts.PartWriter`) and a sharded dataset (:class:`~embedkit.dataset.
DatasetWriter`) are both written by one job at a time, into a partial directory beside the output that a
``--resume`` of the same job continues. What differs (how parts are recorded and put together) stays with them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

from .artefact import output_error, output_lock
from .errors import OutputError

_Job = TypeVar("_Job", bound="OutputJob")


class OutputJob:
    """Holds the lock of ``output`` from construction until :meth:`close` (``with ...:``).

    A second writer of the same output fails with BusyError (exit 7) at once, or waits with ``wait``, before it
    touches anything. With a ``fingerprint`` :meth:`start` runs at once; without one the caller locks first (before
    loading a model) and calls :meth:`start` when the fingerprint is known. Subclasses set their own attributes
    before calling this constructor, since :meth:`start` uses them.
    """

    fingerprint: dict[str, Any]
    job: str

    def __init__(
        self,
        output: Path,
        fingerprint: dict[str, Any] | None,
        *,
        resume: bool,
        overwrite: bool,
        wait: bool,
    ) -> None:
        self._lock = ExitStack()
        self._lock.enter_context(output_lock(output, wait=wait))
        if fingerprint is not None:
            try:
                self.start(fingerprint, resume=resume, overwrite=overwrite)
            except BaseException:
                self.close()
                raise

    def start(self, fingerprint: dict[str, Any], *, resume: bool = False, overwrite: bool = False) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the output's lock (idempotent). The partial directory stays for a --resume."""
        self._lock.close()

    def __enter__(self: _Job) -> _Job:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        self.close()

    def _name_job(self, fingerprint: dict[str, Any]) -> None:
        """The job is its fingerprint: JSON-normalised (tuples as lists, as stored) and hashed."""
        self.fingerprint = json.loads(json.dumps(fingerprint))
        self.job = hashlib.sha256(json.dumps(self.fingerprint, sort_keys=True).encode()).hexdigest()

    @staticmethod
    def _open_partial(partial: Path, *, resume: bool, overwrite: bool, on_resume: Callable[[], None]) -> None:
        """Resume the partial run at ``partial``, drop it (``overwrite``), or refuse; nothing there is fine."""
        if partial.is_symlink() or (partial.exists() and not partial.is_dir()):
            # Parts are written into it and it is deleted at the end: never through a link, never a user's file.
            raise OutputError(
                f"{partial} is not a directory embedkit made (a symlink or a file); move it away and run again"
            )
        if not partial.exists():
            return
        if resume:
            on_resume()
        elif overwrite:
            shutil.rmtree(partial)
        else:
            raise OutputError(
                f"a partial run exists at {partial}: pass --resume to continue it or --overwrite to start over"
            )

    @staticmethod
    def _make_partial(partial: Path) -> None:
        try:
            partial.mkdir(exist_ok=True)
        except OSError as exc:
            raise output_error(partial, exc) from exc
