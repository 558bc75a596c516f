"""Names, digests and places: what every artefact write and read checks first."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import InputError, OutputError

# A stored file name is one path component of these characters: no separator, no "..", no leading dot (our own
# temporary and lock files start with one), nothing a shell or another OS would read differently.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")
# A manifest is a few kilobytes; a huge one is hostile or broken and is refused before it is parsed.
MAX_MANIFEST_BYTES = 16 << 20
_HASH_BLOCK = 1 << 20


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


def absolute(target: str | Path) -> Path:
    """``target`` as an absolute path without ``.``/``..``: an output named ``.`` or ``x/..`` must get its lock and
    temporary directory beside it, in its real parent, never inside itself."""
    return Path(os.path.abspath(target))


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
MANIFEST_NAMES = (
    "index.json",
    "embedkit_model.json",
    "embedkit_clusters.json",
    "embedkit_probe.json",
    "_embedkit-dataset.json",  # a sharded features dataset (sources.DATASET_MANIFEST): its shards are checked too
)


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
