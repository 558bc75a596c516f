"""The one protocol every embedkit output follows: a lock, a write aside, a switch by rename, a checked manifest.

Artefacts (index directories, classifier models, clusterings, probe reports, features files, prediction and
search results) are shared, downloaded and put on shared disks, so three promises hold for all of them:

* **Exclusive**: a writer holds an OS lock (``filelock``, on ``.NAME.lock`` beside the output) for its whole run.
  A second writer fails at once with :class:`~embedkit.errors.BusyError` (exit 7), or waits with ``wait=True``.
  The OS drops the lock when its holder dies, so a killed run never leaves a stale lock behind.
* **Atomic**: a directory is built in a sibling temporary directory (``.NAME.tmp-*``) and switched in with one
  rename (an atomic exchange where the kernel has ``renameat2``), a file is written aside and renamed. A kill at
  any instant leaves the old artefact or the new one, complete; the next writer removes what a killed one left.
* **Data, never code**: a manifest records the sha256 and size of every file. Every file name read from a
  manifest must be a plain name inside the directory, and every file must be a regular file (no symlink) whose
  bytes match the manifest, before anything reads it. Nothing read from an artefact decides what code runs.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock

from .errors import BusyError, InputError, OutputError

log = logging.getLogger(__name__)

# A stored file name is one path component of these characters: no separator, no "..", no leading dot (our own
# temporary and lock files start with one), nothing a shell or another OS would read differently.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")
# A manifest is a few kilobytes; a huge one is hostile or broken and is refused before it is parsed.
MAX_MANIFEST_BYTES = 16 << 20
_HASH_BLOCK = 1 << 20


# ---------------------------------------------------------------------------------------------- names and digests


def plain_name(name: object, *, where: str | Path = "artefact") -> str:
    """``name`` if it is a plain file name that stays inside its directory; else InputError (a corrupt artefact)."""
    if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name) or name in (".", ".."):
        raise InputError(f"{where}: refusing stored file name {name!r}: artefact files must be plain names inside it")
    return name


def parse_json(raw: bytes | str, *, where: str | Path) -> Any:
    """Stored JSON (a manifest, a features file's metadata) parsed, or InputError naming ``where``.

    Whoever wrote the artefact chose these bytes: oversized, not UTF-8, or nested deeper than the parser's
    recursion limit are all a corrupt artefact (exit 3), never an internal error.
    """
    if len(raw) > MAX_MANIFEST_BYTES:
        raise InputError(
            f"{where}: {len(raw)} bytes of stored JSON, far more than embedkit writes; refusing to read it"
        )
    try:
        return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"{where}: not readable JSON ({type(exc).__name__}: {str(exc)[:200]})") from None


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, read in blocks (bounded memory whatever its size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    """What a manifest records of one file."""
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


# ---------------------------------------------------------------------------------------------- locking


def absolute(target: str | Path) -> Path:
    """``target`` as an absolute path without ``.``/``..``: an output named ``.`` or ``x/..`` must get its lock and
    temporary directory beside it, in its real parent, never inside itself."""
    return Path(os.path.abspath(target))


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


# ---------------------------------------------------------------------------------------------- single files


@contextmanager
def writing_file(target: str | Path, *, overwrite: bool = False, wait: bool = False) -> Iterator[Path]:
    """Lock ``target``, refuse an existing one unless ``overwrite``, and yield a temp path renamed onto it at the end.

    On any failure the temp file is removed and ``target`` is left as it was.
    """
    target = absolute(target)
    with output_lock(target, wait=wait):
        _remove_leftovers(target)
        if target.is_dir():
            raise OutputError(f"output {target} is a directory; give a file path")
        if target.exists() and not overwrite:
            raise OutputError(f"output {target} exists; pass --overwrite to replace it")
        with atomic_path(target) as tmp:
            yield tmp


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temp path beside ``target``; on success it is fsynced and renamed onto ``target``.

    On failure the temp file is removed, so a crash never leaves a file that looks complete. Callers that may race
    another writer hold :func:`output_lock` around it (or use :func:`writing_file`).
    """
    target = Path(target)
    _check_parent(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes files private (0600); outputs get the usual mode
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise output_error(target, exc) from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text_atomic(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------------------------- directories


@dataclass
class Staging:
    """A directory being built aside. Write files with :meth:`path`, then :meth:`seal` with the stage's facts."""

    directory: Path
    manifest_name: str
    kind: str
    manifest: dict[str, Any] | None = field(default=None)

    def path(self, name: str) -> Path:
        return self.directory / plain_name(name, where=self.directory)

    def seal(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Write the manifest (``meta`` plus kind and the digest of every file written) last. Returns it."""
        files = {}
        for entry in sorted(self.directory.iterdir()):
            if entry.name == self.manifest_name:
                continue
            if not entry.is_file() or entry.is_symlink():
                raise OutputError(f"{entry}: only plain files can be part of an artefact")
            files[plain_name(entry.name, where=self.directory)] = file_entry(entry)
        manifest = {**meta, "kind": self.kind, "files": files}
        write_text_atomic(self.path(self.manifest_name), json.dumps(manifest, indent=1, default=str) + "\n")
        self.manifest = manifest
        return manifest


@contextmanager
def writing_dir(
    target: str | Path,
    *,
    kind: str,
    manifest_name: str,
    overwrite: bool = False,
    wait: bool = False,
    start_from_current: bool = False,
    former_names: Collection[str] = (),
) -> Iterator[Staging]:
    """Build the artefact directory ``target`` aside, under its lock, and switch it in at the end.

    Refused before any work: another writer (BusyError), ``target`` a file, a finished artefact without
    ``overwrite``, or a non-empty directory that is not one of ours (never clobber a user's directory). The body
    writes into the yielded :class:`Staging` and calls ``seal``; an exception (or a kill) leaves ``target`` as it
    was. ``start_from_current`` copies the current artefact's files into the staging directory first (for
    updates in place such as ``index add``), hard-linking where the file system allows. ``former_names``: the
    files an earlier embedkit wrote there without a manifest; a directory holding only those is replaceable.
    """
    target = absolute(target)
    with output_lock(target, wait=wait):
        _remove_leftovers(target)
        check_dir_target(
            target, manifest_name=manifest_name, overwrite=overwrite or start_from_current, former_names=former_names
        )
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
            os.chmod(staging, 0o777 & ~_UMASK)
        except OSError as exc:
            raise output_error(target, exc) from exc
        try:
            if start_from_current and target.is_dir():
                for entry in target.iterdir():
                    if entry.is_file() and not entry.is_symlink():
                        _link_or_copy(entry, staging / entry.name)
            stage = Staging(staging, manifest_name, kind)
            yield stage
            if stage.manifest is None:
                raise RuntimeError(f"the {kind} writer did not seal {target}")  # a bug, not bad input
            _fsync_dir(staging)
            _switch(staging, target)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise output_error(target, exc) from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def check_dir_target(target: Path, *, manifest_name: str, overwrite: bool, former_names: Collection[str] = ()) -> None:
    """Refuse an output directory that cannot be (re)placed: see :func:`writing_dir`."""
    _check_parent(target)
    if target.is_symlink():
        raise OutputError(f"output {target} is a symlink; give the real directory's path (it is replaced by a rename)")
    if target.exists() and not target.is_dir():
        raise OutputError(f"output {target} exists and is not a directory")
    if not target.exists():
        return
    has_manifest = (target / manifest_name).is_file()
    if has_manifest and not overwrite:
        raise OutputError(f"{target} already holds a {manifest_name} artefact; pass --overwrite to replace it")
    names = {entry.name for entry in target.iterdir()} if not has_manifest else set()
    if names and former_names and names <= set(former_names):
        # Written by an earlier embedkit, before manifests: ours to replace, but only when asked to.
        if not overwrite:
            raise OutputError(
                f"{target} holds an earlier embedkit output ({', '.join(sorted(names))}); pass "
                "--overwrite to replace it"
            )
        return
    if names:
        raise OutputError(f"{target} is not empty and holds no embedkit {manifest_name}; refusing to replace it")


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


# ---------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Artefact:
    """An opened artefact directory whose manifest was read and whose files were verified."""

    directory: Path
    manifest: dict[str, Any]

    def path(self, name: object) -> Path:
        """The verified file ``name`` of this artefact; InputError for a name the manifest does not list."""
        name = plain_name(name, where=self.directory)
        if name not in self.manifest["files"]:
            raise InputError(f"{self.directory}: {name} is not listed in the manifest; the artefact is corrupt")
        return self.directory / name


def read_manifest(directory: str | Path, *, manifest_name: str, what: str) -> dict[str, Any]:
    """Read and shape-check the manifest of an artefact directory (no data file is touched).

    Raises InputError for a missing directory, a missing, oversized, symlinked or malformed manifest, or a stored
    file name that is not plain.
    """
    directory = Path(directory)
    _restore_stranded(directory)
    if not directory.is_dir():
        raise InputError(f"{what} {directory} does not exist")
    path = directory / manifest_name
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise InputError(
            f"{directory} is not a complete embedkit {what} (no {manifest_name}): an interrupted run, or another "
            "kind of directory"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path} is not a regular file (a symlink?); refusing to read it")
    if info.st_size > MAX_MANIFEST_BYTES:
        raise InputError(f"{path} is {info.st_size} bytes, far larger than any manifest; refusing to read it")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path} is not readable ({exc.strerror or exc})") from exc
    manifest = parse_json(raw, where=path)
    if not isinstance(manifest, dict):
        raise InputError(f"{path} is not a JSON object; the {what} is corrupt")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise InputError(f"{path} lists no files; the {what} is corrupt")
    for name, entry in files.items():
        plain_name(name, where=path)
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not _is_count(entry.get("bytes")):
            raise InputError(f"{path}: the entry of {name!r} needs a sha256 and a byte count; the {what} is corrupt")
    return manifest


def open_dir(directory: str | Path, *, manifest_name: str, what: str) -> Artefact:
    """Read the manifest of an artefact directory and verify every file it lists before anything reads them.

    Raises:
        InputError: see :func:`read_manifest`; a listed file missing, not a regular file, or whose size or sha256
            differs from the manifest (changed, truncated or replaced).
    """
    directory = Path(directory)
    manifest = read_manifest(directory, manifest_name=manifest_name, what=what)
    for name, entry in manifest["files"].items():
        verify_file(directory / name, entry, manifest_name)
    return Artefact(directory, manifest)


def verify_file(path: Path, entry: dict[str, Any], manifest_name: str) -> None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise InputError(f"{path.parent}: {path.name} is missing; the artefact is incomplete") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path} is not a regular file (a symlink?); refusing to read it")
    if info.st_size != entry["bytes"]:
        raise InputError(
            f"{path} is {info.st_size} bytes where {manifest_name} records {entry['bytes']}: truncated or replaced; "
            "refusing to load it"
        )
    if sha256_file(path) != entry["sha256"]:
        raise InputError(f"{path} does not match the sha256 in {manifest_name}: it was modified; refusing to load it")


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


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# ---------------------------------------------------------------------------------------------- errors and checks


def output_error(target: Path, exc: OSError) -> OutputError:
    if exc.errno == errno.ENOSPC:
        return OutputError(f"disk full while writing {target}; free some space and run again (with --resume for embed)")
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return OutputError(f"cannot write {target}: permission denied or read-only file system")
    return OutputError(f"cannot write {target}: {exc.strerror or exc}")


def check_writable_dir(directory: Path) -> None:
    directory = Path(directory)
    if not directory.exists():
        raise OutputError(f"output directory {directory} does not exist")
    if not directory.is_dir():
        raise OutputError(f"{directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {directory} is not writable")


# The manifest of every kind of artefact directory (index, classifier, clustering, probe report). A directory
# holding one is sealed: its files are checked against it, so nothing else may be written there.
MANIFEST_NAMES = ("index.json", "embedkit_model.json", "embedkit_clusters.json", "embedkit_probe.json")


def _check_not_inside_artefact(target: Path) -> None:
    """OutputError when ``target`` lies in an artefact directory (through a symlink too): an output written there
    (``embed -o idx/ids.parquet``, ``predict -o model/eval_predictions.parquet``) would replace one of its files and
    leave the artefact corrupt, or sit in it until the next writer of that artefact deletes it."""
    for directory in {*target.parents, *target.resolve().parents}:
        for name in MANIFEST_NAMES:
            if (directory / name).is_file():
                raise OutputError(
                    f"output {target} is inside the embedkit artefact {directory} (it holds {name}); writing there "
                    "would corrupt it, so write the output elsewhere"
                )


def _check_parent(target: Path) -> None:
    check_writable_dir(target.parent if str(target.parent) else Path("."))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()
