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

One module per job: ``checks`` (plain names, digests, JSON limits, writable places), ``lock`` (the OS lock of an
output), ``write`` (a file or a directory written aside), ``switch`` (the rename that puts it in place and the
clean-up after a killed writer) and ``read`` (a manifest read and every file verified). Every name is
re-exported here: callers use ``artefact.writing_dir``, ``artefact.open_dir``, ...
"""

from __future__ import annotations

from .checks import (
    _PLAIN_NAME,
    _UMASK,
    MANIFEST_NAMES,
    MAX_MANIFEST_BYTES,
    _fsync_dir,
    absolute,
    check_writable_dir,
    file_entry,
    output_error,
    parse_json,
    plain_name,
    sha256_file,
)
from .lock import lock_path, output_lock
from .read import Artefact, open_dir, read_manifest, verify_file
from .switch import _link_or_copy, _switch, stale_temp_files
from .write import Staging, atomic_path, check_dir_target, write_text_atomic, writing_dir, writing_file

__all__ = [
    "MANIFEST_NAMES",
    "MAX_MANIFEST_BYTES",
    "Artefact",
    "Staging",
    "_PLAIN_NAME",
    "_UMASK",
    "_fsync_dir",
    "_link_or_copy",
    "_switch",
    "absolute",
    "atomic_path",
    "check_dir_target",
    "check_writable_dir",
    "file_entry",
    "lock_path",
    "open_dir",
    "output_error",
    "output_lock",
    "parse_json",
    "plain_name",
    "read_manifest",
    "sha256_file",
    "stale_temp_files",
    "verify_file",
    "write_text_atomic",
    "writing_dir",
    "writing_file",
]
