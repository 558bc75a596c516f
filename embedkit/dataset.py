"""Sharded features datasets: ``DIR/part-00000.parquet ...`` plus the manifest ``DIR/_embedkit-dataset.json``.

One features file stops scaling when one process must write it: a dataset is written shard by shard, by as many
workers as there are (``write_shard``, any process that sees the file system), while one driver
(:class:`DatasetWriter`) holds the output's lock, journals the finished shards, and at the end verifies them,
writes the manifest and switches the whole directory in with one rename. A killed job leaves its shards in the
staging directory ``DIR.partial``; ``resume`` keeps every shard that is still whole and redoes the others.

The manifest carries what a single features file carries in its Parquet metadata (the ``features`` table) plus
each shard's rows, size and sha256. It is validated (pydantic) before any name in it is used, and a shard's name
must be exactly the one its index gives, so no stored name leads outside the directory. It starts with an
underscore so that pyarrow, pandas, polars and Hugging Face ``datasets`` read the directory as-is (they skip
``_``-prefixed files).
"""

from __future__ import annotations

import json
import logging
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import artefact, vectors
from .artefact import atomic_path, output_error, write_text_atomic
from .errors import IncompatibleError, InputError, OutputError
from .output_job import OutputJob
from .sources import DATASET_MANIFEST

log = logging.getLogger(__name__)

MANIFEST_NAME = DATASET_MANIFEST  # sources skips it when a dataset directory is read as text input
JOURNAL_NAME = "_journal.json"  # in the staging directory only: the shards the driver recorded so far
KIND: Literal["embedkit-dataset"] = "embedkit-dataset"
FORMAT: Literal[1] = 1
MAX_SHARDS = 1_000_000  # a manifest listing more is hostile or broken; refused before anything is allocated


def shard_name(index: int) -> str:
    """The file name of shard ``index``: the only name a manifest may give it."""
    return f"part-{index:05d}.parquet"


def staging_dir(output: Path) -> Path:
    """Where the shards of ``output`` are written until the job finishes (kept after a failure, for resume)."""
    output = artefact.absolute(output)
    return output.with_name(output.name + ".partial")


# ---------------------------------------------------------------------------------------------- manifest


class ShardInfo(BaseModel):
    """One shard as the journal and the manifest record it."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    index: int = Field(ge=0, lt=MAX_SHARDS)
    file: str
    rows: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _named_by_index(self) -> ShardInfo:
        # Names are never free text: "../x" or "/etc/passwd" can only come from tampering, and is refused here.
        if self.file != shard_name(self.index):
            raise ValueError(f"shard {self.index} must be named {shard_name(self.index)!r}, not {self.file!r}")
        return self


class DatasetManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    kind: Literal["embedkit-dataset"]
    format: Literal[1]
    rows: int = Field(ge=0)
    job: str | None = None  # sha256 of the fingerprint of the job that wrote it: a --resume after the end is a no-op
    features: dict[str, Any]  # what a single features file carries in its "embedkit" Parquet metadata
    shards: list[ShardInfo] = Field(min_length=1, max_length=MAX_SHARDS)

    @model_validator(mode="after")
    def _complete(self) -> DatasetManifest:
        if [s.index for s in self.shards] != list(range(len(self.shards))):
            raise ValueError("shards must be numbered 0, 1, 2, ... without a gap")
        if sum(s.rows for s in self.shards) != self.rows:
            raise ValueError(f"rows {self.rows} is not the sum of the shards' rows")
        return self


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "manifest"
    return f"{where}: {first.get('msg')}"


def read_manifest(directory: str | Path) -> DatasetManifest:
    """The validated manifest of a dataset directory; InputError for anything missing, oversized or malformed."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise InputError(f"{directory} is not a complete embedkit dataset (no {MANIFEST_NAME})") from None
    except OSError as exc:
        raise InputError(f"{path} is not readable ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path} is not a regular file (a symlink?); refusing to read it")
    if info.st_size > artefact.MAX_MANIFEST_BYTES:
        raise InputError(f"{path} is {info.st_size} bytes, far larger than any manifest; refusing to read it")
    raw = path.read_bytes()
    artefact.parse_json(raw, where=path)  # the clear message for bytes that are not JSON at all
    try:
        return DatasetManifest.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise InputError(
            f"{path}: the dataset manifest is corrupt or was edited ({_validation_message(exc)})"
        ) from None


def is_dataset(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding an embedkit dataset manifest (not checked further)."""
    path = Path(path)
    try:
        return path.is_dir() and stat.S_ISREG((path / MANIFEST_NAME).lstat().st_mode)
    except OSError:
        return False


def verify_shard(directory: Path, shard: ShardInfo, *, checksum: bool = True) -> Path:
    """The path of ``shard`` once its size, sha256 (unless not ``checksum``) and row count match the record;
    InputError otherwise."""
    return _verified_footer(directory, shard, checksum)[0]


def _verified_footer(directory: Path, shard: ShardInfo, checksum: bool) -> tuple[Path, pq.FileMetaData]:
    path = directory / shard.file
    entry = {"bytes": shard.bytes, "sha256": shard.sha256}
    artefact.verify_file(path, entry, MANIFEST_NAME, what="dataset", checksum=checksum)
    try:
        footer = pq.read_metadata(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable Parquet file: {exc}") from exc
    if footer.num_rows != shard.rows:
        raise InputError(f"{path} holds {footer.num_rows} rows where the manifest records {shard.rows}")
    return path, footer


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


ShardMap = Callable[[Callable[..., Any], list[tuple[Any, ...]]], list[Any]]


def _map_here(fn: Callable[..., Any], items: list[tuple[Any, ...]]) -> list[Any]:
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
        journal = self.staging / JOURNAL_NAME
        try:
            recorded = json.loads(journal.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            recorded = None
        if recorded is None and (self.staging / MANIFEST_NAME).is_file():
            self._adopt_finished()  # killed between sealing and the switch
            return
        if recorded is None:
            log.info("no readable journal in %s; starting from the first shard", self.staging)
        elif not isinstance(recorded, dict) or recorded.get("fingerprint") != self.fingerprint:
            old = recorded.get("fingerprint") if isinstance(recorded, dict) else None
            from .store import fingerprint_changes

            changes = fingerprint_changes(old, self.fingerprint) if isinstance(old, dict) else ["no fingerprint"]
            raise IncompatibleError(
                f"cannot resume {self.output}: the partial run was made with other settings or input "
                f"({'; '.join(changes)}); run with the same ones, or pass --overwrite to start over"
            )
        else:
            shards = recorded.get("shards")
            for entry in shards if isinstance(shards, list) else []:
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
        shards = [s.model_dump() for _, s in sorted(self._done.items())]
        write_text_atomic(
            self.staging / JOURNAL_NAME,
            json.dumps({"format": FORMAT, "fingerprint": self.fingerprint, "shards": shards}, indent=1),
        )

    # -- shards

    def done(self) -> dict[int, dict[str, Any]]:
        """The shards written and verified so far (on resume: those the killed run left whole), index -> info."""
        return {i: s.model_dump() for i, s in sorted(self._done.items())}

    def record(self, info: dict[str, Any]) -> None:
        """Record a finished shard (what :func:`write_shard` returned) in the journal, atomically."""
        try:
            shard = ShardInfo.model_validate(info, strict=True)
        except ValidationError as exc:
            raise ValueError(f"not a shard record: {_validation_message(exc)}") from None
        if not (self.staging / shard.file).is_file():
            raise OutputError(f"shard {shard.file} was recorded but is not in {self.staging}")
        self._done[shard.index] = shard
        self._save_journal()

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
        run = map_shards or _map_here
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


def iter_shard_paths(directory: Path, manifest: DatasetManifest) -> Iterator[tuple[ShardInfo, Path]]:
    """Each shard with its path, verified just before it is yielded (so a reader never reads an unchecked file)."""
    for shard in manifest.shards:
        yield shard, verify_shard(directory, shard)


def shard_stat_check(directory: Path, manifest: DatasetManifest) -> None:
    """The cheap check made when a dataset is opened: every shard is there, a regular file of the recorded size."""
    for shard in manifest.shards:
        path = directory / shard.file
        try:
            info = path.lstat()
        except FileNotFoundError:
            raise InputError(f"{directory}: shard {shard.file} is missing; the dataset is incomplete") from None
        if not stat.S_ISREG(info.st_mode) or info.st_size != shard.bytes:
            raise InputError(
                f"{path} is not the file the manifest records (size {info.st_size}, recorded {shard.bytes}, or not a "
                "regular file): truncated or replaced"
            )


__all__ = [
    "MANIFEST_NAME",
    "DatasetManifest",
    "DatasetWriter",
    "ShardInfo",
    "is_dataset",
    "read_manifest",
    "shard_name",
    "verify_shard",
    "write_shard",
]
