"""The OS lock every writer of an output holds for its whole run (``filelock``, ``.NAME.lock`` beside it)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from ..errors import BusyError
from .checks import _check_not_inside_artefact, _check_parent, absolute, output_error


def lock_path(target: Path) -> Path:
    """The lock file of an output: hidden, beside it (inside it would not survive the switch by rename)."""
    target = absolute(target)
    return target.parent / f".{target.name}.lock"


@contextmanager
def output_lock(target: str | Path, *, wait: bool = False) -> Iterator[None]:
    """Hold the exclusive lock of ``target`` for the duration; BusyError at once if another process holds it.

    ``wait=True`` blocks until the other writer is done instead.
    """
    target = absolute(target)
    _check_parent(target)
    _check_not_inside_artefact(target)
    lock = filelock.FileLock(str(lock_path(target)), timeout=-1 if wait else 0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise BusyError(
            f"{target} is being written by another embedkit process; wait for it to finish, or pass --wait"
        ) from None
    except OSError as exc:
        raise output_error(lock_path(target), exc) from exc
    try:
        yield
    finally:
        lock.release()
