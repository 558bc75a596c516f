"""The switch by rename (an atomic exchange where the kernel has one) and what a killed writer leaves behind."""

from __future__ import annotations

import ctypes
import errno
import glob
import os
import re
import shutil
import tempfile
from pathlib import Path

import filelock

from .checks import _fsync_dir, absolute
from .lock import lock_path


def _switch(staging: Path, target: Path) -> None:
    """Put ``staging`` at ``target`` in one step where possible; the old directory (if any) is then removed."""
    if not target.exists():
        os.rename(staging, target)
    elif _exchange(staging, target):
        shutil.rmtree(staging)  # now holds the old artefact
    else:
        # No atomic exchange on this file system: move the old one aside first. A kill between the two renames
        # leaves only ".NAME.old-*", which the next writer (or reader) of NAME puts back.
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rmdir(old)
        os.rename(target, old)
        os.rename(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(target.parent)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's renameat2(RENAME_EXCHANGE); False where it is not available."""
    renameat2 = getattr(_LIBC, "renameat2", None) if _LIBC is not None else None
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _load_libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _load_libc()


def _remove_leftovers(target: Path) -> None:
    """Remove what killed writers of ``target`` left beside it; restore an old artefact stranded mid-switch."""
    pattern = f".{target.name}."
    for entry in target.parent.iterdir() if target.parent.is_dir() else ():
        rest = entry.name[len(pattern) :] if entry.name.startswith(pattern) else ""
        if not _LEFTOVER_DIR.fullmatch(rest) or not entry.is_dir() or entry.is_symlink():
            continue
        if rest.startswith("old-") and not target.exists():
            os.rename(entry, target)  # killed between the two renames of the fallback switch
        else:
            shutil.rmtree(entry, ignore_errors=True)
    for stale in stale_temp_files(target):
        stale.unlink(missing_ok=True)


def stale_temp_files(target: Path) -> list[Path]:
    """The temporary files :func:`atomic_path` made for ``target`` (and no other output's): a killed writer's."""
    pattern = f".{target.name}."
    return [
        entry
        for entry in (target.parent.iterdir() if target.parent.is_dir() else ())
        if entry.name.startswith(pattern) and _LEFTOVER_FILE.fullmatch(entry.name[len(pattern) :]) and entry.is_file()
    ]


# What follows ".NAME." in the names tempfile gives a writer's leftovers: exactly its random part, so the
# in-flight temp file ".NAME.csv.x1y2z3w4.tmp" of another output "NAME.csv" (under its own lock) is never
# taken for a leftover of "NAME".
_LEFTOVER_DIR = re.compile(r"(?:tmp|old)-[a-z0-9_]{8}")
_LEFTOVER_FILE = re.compile(r"[a-z0-9_]{8}\.tmp")


def _link_or_copy(source: Path, destination: Path) -> None:
    # Files of a sealed artefact are never written again (writers always make new ones), so a hard link is a safe
    # and free copy; across devices or where links are not allowed, copy.
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _restore_stranded(directory: Path) -> None:
    # Only the fallback switch (no renameat2) can strand an artefact as ".NAME.old-*" with NAME gone. A writer
    # between its two renames is in exactly that state, so a reader puts the old one back only when it can take
    # the lock itself (no writer is running), without waiting.
    directory = absolute(directory)
    if directory.exists() or not directory.parent.is_dir():
        return
    stranded = sorted(directory.parent.glob(f".{glob.escape(directory.name)}.old-*"))
    if not stranded:
        return
    try:
        with filelock.FileLock(str(lock_path(directory)), timeout=0):
            if not directory.exists():
                os.rename(stranded[0], directory)
    except (filelock.Timeout, OSError):
        return  # a writer is mid-switch (it will finish), or the directory is read-only: read what is there
