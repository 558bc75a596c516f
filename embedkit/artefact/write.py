"""Outputs written aside: a single file renamed into place, or a directory built in a sibling and switched in."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OutputError
from .checks import _UMASK, _check_parent, _fsync_dir, absolute, file_entry, output_error, plain_name
from .lock import output_lock
from .switch import _link_or_copy, _remove_leftovers, _switch


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
