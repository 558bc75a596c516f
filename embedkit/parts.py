"""Writing a features file through committed parts, resumable, merged atomically at the end.

Every batch of rows becomes ``OUT.partial/part-NNNNNN.parquet`` (temp file + fsync + rename) and is then recorded
in ``OUT.partial/manifest.json`` (same dance). A run that is killed at any point leaves only whole parts behind;
``--resume`` continues after the last recorded one. At the end the parts are merged into ``OUT`` through a temp
file and an atomic rename, so a reader never sees a half-written output. (A sharded dataset keeps its parts as
shards instead: :mod:`embedkit.dataset`.)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from . import vectors
from .artefact import absolute, atomic_path, stale_temp_files, write_text_atomic
from .errors import IncompatibleError, InputError, OutputError
from .output_job import OutputJob
from .sources import utf8_path
from .store import _PART_NAME, FORMAT_VERSION, JOB_KEY, fingerprint_changes, with_metadata

log = logging.getLogger(__name__)


class PartWriter(OutputJob):
    """Writes committed parts for ``output`` and merges them into it at the end, holding the output's lock.

    Two writers of one output never both run: the constructor takes :func:`~embedkit.artefact.output_lock` of
    ``output`` (BusyError, exit 7, at once if another process holds it; with ``wait`` it waits), before the partial
    directory is touched, and holds it until :meth:`close` (``with PartWriter(...)``), after the merge or the
    failure. Engines take it before loading the model, so a second writer fails in a second, not after a model
    load, and call :meth:`start` once the fingerprint is known. The old output stays in place until ``finish``
    renames the merged file over it.

    Args:
        output: final Parquet path.
        fingerprint: what must match for a resume to be allowed (settings, input content, columns); given here,
            :meth:`start` runs at once.
        resume: continue a partial run whose fingerprint matches.
        overwrite: replace an existing output and discard any partial run.
        wait: wait for another writer of ``output`` to finish instead of raising BusyError.
    """

    def __init__(
        self,
        output: Path,
        fingerprint: dict[str, Any] | None = None,
        *,
        resume: bool = False,
        overwrite: bool = False,
        wait: bool = False,
    ):
        self.output = Path(output)
        if not utf8_path(self.output):
            raise OutputError(
                f"output {os.fsencode(self.output)!r} is not a valid UTF-8 name, which Parquet (Arrow) file names must "
                "be; choose another name"
            )
        self.partial = self.output.with_name(self.output.name + ".partial")
        self.manifest_path = self.partial / "manifest.json"
        self.parts: list[dict[str, Any]] = []
        # Set when --resume finds this very job already merged into the output (a kill after the merge).
        self.complete = False
        super().__init__(self.output, fingerprint, resume=resume, overwrite=overwrite, wait=wait)

    def start(self, fingerprint: dict[str, Any], *, resume: bool = False, overwrite: bool = False) -> None:
        """Check the output and set up (or resume) the partial run of the job ``fingerprint`` names."""
        self._name_job(fingerprint)
        # The partial directory is renamed here before it is deleted; a kill mid-delete leaves only this.
        shutil.rmtree(self._trash, ignore_errors=True)
        # Temp files of a merge that a kill interrupted (atomic_path's naming); garbage whatever this run does.
        for stale in stale_temp_files(absolute(self.output)):
            stale.unlink(missing_ok=True)
        if self.output.is_dir():
            raise OutputError(
                f"output {self.output} is a directory; give a .parquet file path (or end it with / for a sharded "
                "dataset)"
            )
        self._open_partial(self.partial, resume=resume, overwrite=overwrite, on_resume=self._load_manifest)
        if self.output.exists() and not overwrite and not self.partial.exists():
            if resume and self._output_job() == self.job:
                self.complete = True
                return
            raise OutputError(f"output {self.output} exists; pass --overwrite to replace it")
        self._make_partial(self.partial)
        if not self.parts:
            self._save_manifest()

    @property
    def _trash(self) -> Path:
        return self.output.with_name(self.output.name + ".partial.trash")

    def _output_job(self) -> str | None:
        try:
            return (pq.read_schema(self.output).metadata or {}).get(JOB_KEY, b"").decode() or None
        except (OSError, pa.ArrowException):
            return None

    def output_rows(self) -> int:
        return pq.read_metadata(self.output).num_rows

    @property
    def rows_done(self) -> int:
        return sum(p["rows"] for p in self.parts)

    def _load_manifest(self) -> None:
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            # Killed before the first manifest landed: nothing was committed yet.
            log.info("no readable manifest in %s; starting from the first row", self.partial)
            return
        if not isinstance(manifest, dict) or not isinstance(manifest.get("fingerprint"), dict):
            raise InputError(
                f"cannot resume {self.output}: {self.manifest_path} is damaged (no fingerprint); pass --overwrite to "
                "start over"
            )
        if manifest["fingerprint"] != self.fingerprint:
            old, new = manifest["fingerprint"], self.fingerprint
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise IncompatibleError(
                f"cannot resume {self.output}: the partial run was made with different {', '.join(changed)} "
                f"({'; '.join(fingerprint_changes(old, new))}); "
                "run with the same settings and input, or pass --overwrite to start over"
            )
        self.parts = self._checked_parts(manifest.get("parts"))
        log.info("resuming %s after %d committed rows", self.output, self.rows_done)

    def _checked_parts(self, parts: object) -> list[dict[str, Any]]:
        """The committed parts a resume may build on, each checked before it is read; InputError otherwise.

        The manifest is a file anyone can edit: a part named ``../x.parquet`` or a symlink would merge another
        file into the output, and a wrong row count (or a listed part gone) would make the resume skip or repeat
        input rows. The local engine commits parts 0, 1, 2... in input order and resumes after their rows, so its
        parts must be exactly that sequence; the Ray engine's parts finish out of order.
        """

        def damaged(why: str) -> InputError:
            return InputError(
                f"cannot resume {self.output}: {self.manifest_path} is damaged ({why}); pass --overwrite to start over"
            )

        if not isinstance(parts, list):
            raise damaged("no list of parts")
        ordered = self.fingerprint.get("engine") != "ray"
        checked, seen = [], set()
        for i, part in enumerate(parts):
            if not isinstance(part, dict) or not isinstance(part.get("file"), str):
                raise damaged(f"part {i} has no file name")
            name, rows = part["file"], part.get("rows")
            match = _PART_NAME.fullmatch(name)
            if match is None or name in seen or (ordered and int(match.group(1)) != i):
                raise damaged(f"unexpected part file name {name!r}")
            if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
                raise damaged(f"part {name} has no row count")
            path = self.partial / name
            try:
                regular = stat.S_ISREG(path.lstat().st_mode)
                stored_rows = pq.read_metadata(path).num_rows if regular else None
            except (OSError, pa.ArrowException):
                regular, stored_rows = False, None
            if not regular:
                raise damaged(f"part {name} is missing or not a regular file")
            if stored_rows != rows:
                raise damaged(f"part {name} holds {stored_rows} rows where the manifest records {rows}")
            seen.add(name)
            checked.append({"file": name, "rows": rows})
        return checked

    def _save_manifest(self) -> None:
        write_text_atomic(
            self.manifest_path,
            json.dumps({"format": FORMAT_VERSION, "fingerprint": self.fingerprint, "parts": self.parts}, indent=1),
        )

    def commit(self, table: pa.Table, index: int | None = None) -> None:
        """Write one part atomically, then record it in the manifest.

        Parts are numbered in commit order unless ``index`` names the part (the Ray engine, whose parts finish
        out of order); ``finish`` merges them in the order of ``parts``.
        """
        name = f"part-{len(self.parts) if index is None else index:06d}.parquet"
        with atomic_path(self.partial / name) as tmp:
            pq.write_table(table, tmp)
        self.parts.append({"file": name, "rows": table.num_rows})
        self._save_manifest()

    def abandon(self) -> None:
        """Remove the partial directory (nothing worth resuming: no rows, or a strict-mode stop)."""
        # Renamed away first, as in finish: a kill mid-delete must not leave a manifest whose parts are half gone.
        try:
            self.partial.rename(self._trash)
        except OSError:
            shutil.rmtree(self.partial, ignore_errors=True)
        shutil.rmtree(self._trash, ignore_errors=True)

    @contextmanager
    def abandoned_on_failure(self) -> Iterator[None]:
        """Around an engine's part loop: keep the committed parts only where a rerun with --resume can use them.

        The input itself at fault (a bad row in strict mode, corrupt data mid-file): resuming would stop at the
        same row, and a repaired input no longer matches the fingerprint, so the parts are of no use; left
        behind, they would only make the next run refuse with "a partial run exists". Any other failure (a
        kill, a full disk, a lost Ray node) keeps them, unless none was committed.
        """
        try:
            yield
        except InputError:
            self.abandon()
            raise
        except BaseException:
            if not self.parts:
                self.abandon()
            raise

    def finish(self, meta: dict[str, Any]) -> int:
        """Merge the parts into the output (atomically) and remove the partial directory. Returns rows."""
        files = [self.partial / p["file"] for p in self.parts]
        schemas = [pq.read_schema(f) for f in files]
        # Parts are separate files, so a passthrough column that was all-null in one part and typed in another
        # is reconciled here instead of breaking the run.
        # int8 vectors are quantised here, with a scale from every part (embedkit.vectors: why at the merge).
        encoder, meta = vectors.merge_encoder(files, meta)
        unified = encoder.schema(pa.unify_schemas(schemas, promote_options="permissive").remove_metadata())
        schema = with_metadata(unified, meta)
        # Which job made the file, so a --resume that lands after the merge knows there is nothing left to do.
        schema = schema.with_metadata({**schema.metadata, JOB_KEY: self.job.encode()})
        rows = 0
        with atomic_path(self.output) as tmp:
            with pq.ParquetWriter(tmp, schema) as writer:
                for f in files:
                    table = encoder.apply(pq.read_table(f)).cast(schema)
                    writer.write_table(table)
                    rows += table.num_rows
        # The output's rename above is the commit point; renaming the partial directory away first means a kill
        # during the delete never leaves a half-deleted partial run next to a finished output.
        try:
            self.partial.rename(self._trash)
        except OSError:
            shutil.rmtree(self.partial, ignore_errors=True)
        shutil.rmtree(self._trash, ignore_errors=True)
        return rows
