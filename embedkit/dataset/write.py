"""Writing a sharded dataset: :func:`write_shard` wherever the work runs, :class:`DatasetWriter` in the driver.

The writer holds the output's lock, journals the finished shards (so a killed job resumes), and at the end checks
them, writes the manifest and switches the staging directory in with one rename (see the package's description).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from .. import artefact, vectors
from ..artefact import atomic_path, output_error, write_text_atomic
from ..errors import IncompatibleError, InputError, OutputError
from ..output_job import OutputJob
from .manifest import (
    FORMAT,
    JOURNAL_NAME,
    KIND,
    MANIFEST_NAME,
    MAX_SHARDS,
    DatasetManifest,
    ShardInfo,
    _validation_message,
    _verified_footer,
    is_dataset,
    read_manifest,
    shard_name,
    staging_dir,
    verify_shard,
)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- writing


def write_shard(staging: Path, index: int, table: pa.Table) -> dict[str, Any]:
    """Write shard ``index`` into ``staging`` atomically (temp name, fsync, rename); return what to record.

    Runs wherever the work is (a Ray worker on another node sharing the file system): it takes no lock, since the
    driver holds the output's, and each index is written by one task. Rewriting the same index (a retried task)
    replaces the file whole.
    """
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < MAX_SHARDS:
        raise ValueError(f"shard index must be an int in [0, {MAX_SHARDS}), got {index!r}")
    name = shard_name(index)
    target = Path(staging) / name
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)
    return {
        "index": index,
        "file": name,
        "rows": table.num_rows,
        "bytes": target.stat().st_size,
        "sha256": artefact.sha256_file(target),
    }


def _read_journal(path: Path) -> tuple[dict[str, Any] | None, list[Any]]:
    """The journal's header and its shard entries; (None, []) when there is no usable journal. Lines that do not
    parse (a torn last line) are skipped: the shard they named is redone."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return None, []
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except (ValueError, RecursionError):
            log.warning("skipping an unreadable line of %s (a run killed while recording a shard)", path)
    if not parsed or not isinstance(parsed[0], dict):
        return None, []
    return parsed[0], parsed[1:]


ShardMap = Callable[[Callable[..., Any], list[tuple[Any, ...]]], list[Any]]


def map_here(fn: Callable[..., Any], items: list[tuple[Any, ...]]) -> list[Any]:
    """The default ``map_shards``: each call in this process, in order."""
    return [fn(*args) for args in items]


def inspect_shard(
    staging: Path, info: dict[str, Any], columns: list[str], checksum: bool
) -> tuple[pa.Schema, dict[str, Any]]:
    """A finished shard's check (:func:`verify_shard`), its schema and its int8 maxima (``columns``, if any).

    A plain function of plain arguments: ``DatasetWriter.finish`` may run it on a Ray worker.
    """
    path, footer = _verified_footer(Path(staging), ShardInfo.model_validate(info), checksum)
    return footer.schema.to_arrow_schema().remove_metadata(), vectors.file_maxima(path, columns)


def rewrite_shard(staging: Path, index: int, encoder: vectors.MergeEncoder, schema: pa.Schema) -> dict[str, Any]:
    """Shard ``index`` rewritten with ``encoder`` applied and cast to ``schema`` (atomically); its new record."""
    table = encoder.apply(pq.read_table(Path(staging) / shard_name(index))).cast(schema)
    return write_shard(Path(staging), index, table)


class DatasetWriter(OutputJob):
    """The driver side of a sharded dataset: the output's lock, the journal of finished shards, the final switch.

    The lock (:func:`~embedkit.artefact.output_lock` of ``output``) is taken in the constructor and held until
    :meth:`close` (``with DatasetWriter(...)``): a second writer of the same output fails with BusyError (exit 7)
    at once, or waits with ``wait``. Leaving the ``with`` block on an error keeps the staging directory and its
    journal for ``resume``; :meth:`abandon` drops them.

    Args:
        output: the dataset directory to create (or replace with ``overwrite``).
        fingerprint: what a resumed run must share with the partial one (settings, input, shard size). When None,
            only the lock is taken and :meth:`start` is called later (the embed driver locks before loading a model).
        resume: continue a partial run with the same fingerprint; its shards are verified and the bad ones redone.
        overwrite: replace an existing dataset (kept until the new one is switched in) and drop a partial run.
        wait: wait for another writer of ``output`` instead of raising BusyError.
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
        self.output = artefact.absolute(output)
        self.staging = staging_dir(self.output)
        self.complete = False  # --resume found this very job already finished
        self._started = False
        self._done: dict[int, ShardInfo] = {}
        super().__init__(self.output, fingerprint, resume=resume, overwrite=overwrite, wait=wait)

    # -- lifecycle

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        # A failed job keeps its staging directory for --resume; one that recorded no shard has nothing worth
        # resuming, and left behind it would only make the next run refuse ("a partial run exists").
        if exc_type is not None and self._started and not self._done and not self.complete:
            self.abandon()
        self.close()

    def start(self, fingerprint: dict[str, Any], *, resume: bool = False, overwrite: bool = False) -> None:
        """Check the output and set up (or resume) the staging directory of the job ``fingerprint`` names."""
        self._name_job(fingerprint)
        self._check_output(resume=resume, overwrite=overwrite)
        if self.complete:
            return
        self._open_partial(self.staging, resume=resume, overwrite=overwrite, on_resume=self._resume)
        if self.complete:
            return
        self._make_partial(self.staging)
        self._save_journal()
        self._started = True

    def _check_output(self, *, resume: bool, overwrite: bool) -> None:
        out = self.output
        if out.is_symlink() or (out.exists() and not out.is_dir()):
            raise OutputError(f"output {out} exists and is not a directory; a sharded dataset is a directory")
        if not out.exists():
            return
        if is_dataset(out):
            if resume and not self.staging.exists() and self._output_job() == self.job:
                self.complete = True  # killed after the switch: nothing left to do
                return
            if not overwrite and not (resume and self.staging.exists()):  # a resumed --overwrite run may finish
                raise OutputError(f"output {out} exists; pass --overwrite to replace it")
        elif any(out.iterdir()):
            raise OutputError(f"{out} is not empty and holds no embedkit dataset; refusing to replace it")

    def _output_job(self) -> str | None:
        try:
            return read_manifest(self.output).job
        except InputError:
            return None

    def _resume(self) -> None:
        recorded, entries = _read_journal(self.staging / JOURNAL_NAME)
        if recorded is None and (self.staging / MANIFEST_NAME).is_file():
            self._adopt_finished()  # killed between sealing and the switch
            return
        if recorded is None:
            log.info("no readable journal in %s; starting from the first shard", self.staging)
        elif not isinstance(recorded, dict) or recorded.get("fingerprint") != self.fingerprint:
            old = recorded.get("fingerprint") if isinstance(recorded, dict) else None
            from ..store import fingerprint_changes

            changes = fingerprint_changes(old, self.fingerprint) if isinstance(old, dict) else ["no fingerprint"]
            raise IncompatibleError(
                f"cannot resume {self.output}: the partial run was made with other settings or input "
                f"({'; '.join(changes)}); run with the same ones, or pass --overwrite to start over"
            )
        else:
            for entry in entries:  # a shard recorded twice (a retried task) counts as its last record
                try:
                    shard = ShardInfo.model_validate(entry, strict=True)
                    verify_shard(self.staging, shard)
                except (ValidationError, InputError) as exc:
                    log.warning("redoing a shard of %s: %s", self.output, exc)
                    continue
                self._done[shard.index] = shard
        keep = {s.file for s in self._done.values()} | {JOURNAL_NAME}
        for entry in self.staging.iterdir():  # unrecorded or bad shards, a killed worker's temp files
            if entry.name not in keep:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        log.info("resuming %s with %d verified shards", self.output, len(self._done))

    def _adopt_finished(self) -> None:
        try:
            manifest = read_manifest(self.staging)
        except InputError:
            manifest = None
        if manifest is None or manifest.job != self.job:
            shutil.rmtree(self.staging)
            self.staging.mkdir()
            return
        for shard in manifest.shards:
            verify_shard(self.staging, shard)
        self._switch()
        self.complete = True

    def _save_journal(self) -> None:
        """Write the journal afresh: its header and the shards kept so far (at start and after a resume's checks)."""
        lines = [{"format": FORMAT, "fingerprint": self.fingerprint}]
        lines += [s.model_dump() for _, s in sorted(self._done.items())]
        write_text_atomic(self.staging / JOURNAL_NAME, "".join(json.dumps(line) + "\n" for line in lines))

    def _append_journal(self, shard: ShardInfo) -> None:
        """Add one shard's line, flushed to disk before the shard counts as done. A kill mid-line leaves a torn
        last line, which a resume skips (that shard is redone)."""
        with open(self.staging / JOURNAL_NAME, "a", encoding="utf-8") as f:
            f.write(shard.model_dump_json() + "\n")
            f.flush()
            os.fsync(f.fileno())

    # -- shards

    def done(self) -> dict[int, dict[str, Any]]:
        """The shards written and verified so far (on resume: those the killed run left whole), index -> info."""
        return {i: s.model_dump() for i, s in sorted(self._done.items())}

    def record(self, info: dict[str, Any]) -> None:
        """Record a finished shard (what :func:`write_shard` returned) in the journal (one appended line)."""
        try:
            shard = ShardInfo.model_validate(info, strict=True)
        except ValidationError as exc:
            raise ValueError(f"not a shard record: {_validation_message(exc)}") from None
        if not (self.staging / shard.file).is_file():
            raise OutputError(f"shard {shard.file} was recorded but is not in {self.staging}")
        self._append_journal(shard)
        self._done[shard.index] = shard

    def commit(self, table: pa.Table, index: int) -> None:
        """Write and record one shard from this process (the local engine)."""
        self.record(write_shard(self.staging, index, table))

    @property
    def rows_done(self) -> int:
        return sum(s.rows for s in self._done.values())

    def output_rows(self) -> int:
        """Rows of the finished output (after :attr:`complete` was found)."""
        return read_manifest(self.output).rows

    # -- the end

    def finish(self, meta: dict[str, Any], *, verify_checksums: bool = True, map_shards: ShardMap | None = None) -> int:
        """Verify every shard, write the manifest and switch the staging directory in as ``output``. Returns rows.

        ``verify_checksums=False`` checks each shard's size and row count only, trusting the sha256 its writer
        computed right after writing it (readers still check every sha256 before they read a shard).
        ``map_shards(fn, argument_tuples)`` runs the per-shard work (the checks, int8 maxima, rewrites) where the
        shards are: the Ray engine passes one that runs them as Ray tasks, so the driver reads no shard's data;
        the default runs them here, one after the other.

        Shards must be numbered 0..n-1 without a gap (a gap is a missing shard: rows would be lost). Shards whose
        schema differs from the others' (a column all null in one shard) are rewritten with the unified schema,
        and int8 vectors are quantised with one scale from every shard, as the single-file merge does.
        """
        run = map_shards or map_here
        indices = sorted(self._done)
        missing = sorted(set(range(indices[-1] + 1)) - set(indices)) if indices else [0]
        if missing:
            raise OutputError(
                f"cannot finish {self.output}: shard(s) {', '.join(map(str, missing[:10]))} were never recorded"
            )
        shards = [self._done[i] for i in indices]
        columns = vectors.int8_columns(meta)
        checked = run(inspect_shard, [(self.staging, s.model_dump(), columns, verify_checksums) for s in shards])
        schemas = [schema for schema, _ in checked]
        dims = vectors.vector_dims(schemas[0], columns)
        encoder, meta = vectors.merge_encoder_from([maxima for _, maxima in checked], dims, meta)
        unified = encoder.schema(pa.unify_schemas(schemas, promote_options="permissive"))
        redo = [i for i, schema in enumerate(schemas) if encoder.scales or not schema.equals(unified)]
        rewritten = run(rewrite_shard, [(self.staging, shards[i].index, encoder, unified) for i in redo])
        for i, info in zip(redo, rewritten):
            shards[i] = ShardInfo.model_validate(info)
        manifest = DatasetManifest(
            kind=KIND, format=FORMAT, rows=sum(s.rows for s in shards), job=self.job, features=meta, shards=shards
        )
        write_text_atomic(self.staging / MANIFEST_NAME, manifest.model_dump_json(indent=1))
        (self.staging / JOURNAL_NAME).unlink(missing_ok=True)  # a kill from here on: _adopt_finished
        self._switch()
        return manifest.rows

    def _switch(self) -> None:
        try:
            artefact._fsync_dir(self.staging)
            artefact._switch(self.staging, self.output)
        except OSError as exc:
            raise output_error(self.output, exc) from exc

    def abandon(self) -> None:
        """Drop the staging directory (nothing worth resuming)."""
        shutil.rmtree(self.staging, ignore_errors=True)

    @contextmanager
    def abandoned_on_failure(self) -> Iterator[None]:
        """Keep the shards for a resume on failure, unless the input is at fault or nothing was recorded."""
        try:
            yield
        except InputError:
            self.abandon()
            raise
        except BaseException:
            if not self._done:
                self.abandon()
            raise
