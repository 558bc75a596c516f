"""Reading an artefact: its manifest checked, every file it names verified before anything reads it."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from .checks import MAX_MANIFEST_BYTES, parse_json, plain_name, sha256_file
from .switch import _restore_stranded


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


def verify_file(
    path: Path, entry: dict[str, Any], manifest_name: str, *, what: str = "artefact", checksum: bool = True
) -> None:
    """InputError unless ``path`` is a regular file of the size and (with ``checksum``) the sha256 ``entry``
    records. ``what`` names the whole in the messages (an artefact, a dataset)."""
    verb = "load" if what == "artefact" else "read"
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise InputError(f"{path.parent}: {path.name} is missing; the {what} is incomplete") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path} is not a regular file (a symlink?); refusing to read it")
    if info.st_size != entry["bytes"]:
        raise InputError(
            f"{path} is {info.st_size} bytes where {manifest_name} records {entry['bytes']}: truncated or replaced; "
            f"refusing to {verb} it"
        )
    if checksum and sha256_file(path) != entry["sha256"]:
        raise InputError(f"{path} does not match the sha256 in {manifest_name}: it was modified; refusing to {verb} it")


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
