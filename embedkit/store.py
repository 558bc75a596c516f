"""Parquet output: the column contract, metadata, committed parts, atomic commit, and readers.

Writing goes through committed parts: every batch of rows becomes ``OUT.partial/part-NNNNNN.parquet``
(temp file + fsync + rename) and is then recorded in ``OUT.partial/manifest.json`` (same dance). A run that
is killed at any point leaves only whole parts behind; ``--resume`` continues after the last recorded one.
At the end the parts are merged into ``OUT`` through a temp file and an atomic rename, so a reader never
sees a half-written output.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import vectors
from .artefact import (
    check_writable_dir,  # noqa: F401  (re-exported: classify, cluster, index, probe import it here)
    parse_json,
)
from .config import ExtractConfig
from .errors import InputError
from .sources import parquet_batches

log = logging.getLogger(__name__)

META_KEY = b"embedkit"
JOB_KEY = b"embedkit.job"  # sha256 of the resume fingerprint of the job that wrote the file
FORMAT_VERSION = 1
_PART_NAME = re.compile(r"part-(\d{6})\.parquet")  # what commit() names parts; nothing else is ever read back
INFO_COLUMNS = ("n_tokens", "n_windows", "truncated", "status", "error")


# ---------------------------------------------------------------------------------------------- tables


def vector_type(dim: int, dtype: str) -> pa.DataType:
    """The Arrow type of a stored vector column (embedkit.vectors has the encodings)."""
    return {
        "float16": pa.list_(pa.float16(), dim),
        "int8": pa.list_(pa.int8(), dim),
        "binary": pa.list_(pa.bool_(), dim),
    }.get(dtype, pa.list_(pa.float32(), dim))


def vectors_to_arrow(matrix: np.ndarray, valid: np.ndarray, dtype: str) -> pa.Array:
    """An [n, dim] matrix as a committed part stores it (``fixed_size_list``), null where ``valid`` is False."""
    return vectors.part_array(matrix, valid, dtype)


def matrix_from_arrow(column: pa.Array | pa.ChunkedArray, encoding: dict[str, Any] | None = None) -> np.ndarray:
    """A non-null ``fixed_size_list`` column as an [n, dim] float32 matrix (int8 needs the column's ``encoding``)."""
    return vectors.decode(column, encoding)


# ---------------------------------------------------------------------------------------------- metadata


def read_metadata(path: Path) -> dict[str, Any]:
    """The ``embedkit`` metadata of a features file; InputError when there is none or it is unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"features file {path} does not exist")
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable Parquet file (corrupt or truncated?): {exc}") from exc
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise InputError(f"{path} was not written by embedkit embed (no '{META_KEY.decode()}' metadata)")
    return parse_json(raw, where=f"{path} (embedkit metadata)")


@dataclass(frozen=True)
class Features:
    """An opened features file: its path, Arrow schema, metadata and extraction settings."""

    path: Path
    schema: pa.Schema
    meta: dict[str, Any]
    config: ExtractConfig
    num_rows: int

    @property
    def embedding_columns(self) -> list[str]:
        return [f.name for f in self.schema if f.name.startswith("embedding") and pa.types.is_fixed_size_list(f.type)]

    @property
    def text_columns(self) -> list[str]:
        """String columns other than embedkit's own (id, status, error): what could be shown as a row's text."""
        return [
            f.name
            for f in self.schema
            if f.name not in ("id", "status", "error")
            and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
        ]

    def input_columns(self) -> dict[str, str | None]:
        """The text and id column names of the input the features were embedded from (None where not recorded)."""
        recorded = self.meta.get("columns")
        if not isinstance(recorded, dict):  # older files: "columns" is the list of embedding columns
            return {"text": None, "id": None}
        return {
            key: value if isinstance(value, str) and value else None
            for key, value in (("text", recorded.get("text")), ("id", recorded.get("id")))
        }

    @property
    def text_column(self) -> str | None:
        """The column holding each row's text: the recorded text column when it was kept, else ``text``, else None.

        Every stage that shows or compares texts (index hits, cluster examples, dedup) starts from this, so a
        dataset embedded with ``--text-column body`` needs the flag once, at embed time.
        """
        for name in (self.input_columns()["text"], "text"):
            if name and name in self.schema.names and name in self.text_columns:
                return name
        return None

    def vector_encoding(self, column: str) -> dict[str, Any] | None:
        """How ``column`` is stored beyond its Arrow type (the int8 scale); None for float columns."""
        entries = self.meta.get(vectors.META_KEY)
        entry = entries.get(column) if isinstance(entries, dict) else None
        return entry if isinstance(entry, dict) else None

    def embedding_column(self, name: str | None = None) -> str:
        """Resolve the embedding column to use: ``name`` if given, else the only one, else ``embedding``."""
        columns = self.embedding_columns
        if name is not None:
            if name not in columns:
                raise InputError(
                    f"{self.path}: no embedding column {name!r}; embedding columns: {', '.join(columns) or '(none)'}; "
                    f"all columns: {', '.join(self.schema.names)}"
                )
            return name
        if not columns:
            # A list column named like an embedding but not of fixed size: rows of different lengths (e.g. vectors
            # of two models concatenated by hand). Saying "no embedding column" while listing it would mislead.
            ragged = [
                f.name
                for f in self.schema
                if f.name.startswith("embedding") and (pa.types.is_list(f.type) or pa.types.is_large_list(f.type))
            ]
            if ragged:
                raise InputError(
                    f"{self.path}: column(s) {', '.join(ragged)} hold vectors of varying length, "
                    "not one fixed dimension "
                    "(embedkit writes fixed_size_list<float>[d]); were files of different models or layers mixed?"
                )
            raise InputError(f"{self.path} has no embedding column; columns: {', '.join(self.schema.names)}")
        if len(columns) == 1:
            return columns[0]
        raise InputError(
            f"{self.path} has several embedding columns: {', '.join(columns)}; pick one with --column NAME "
            "(column=NAME in Python)"
        )

    def column_config(self, column: str) -> ExtractConfig:
        """The settings that produced one column (a single layer and pooling)."""
        for (layer, pooling), name in zip(self.config.pairs, self.config.column_names()):
            if name == column:
                return self.config.replace(layers=(layer,), pooling=(pooling,))
        raise InputError(f"{self.path}: column {column!r} is not described by the embedkit metadata")

    def require_columns(self, names: list[str]) -> None:
        absent = [n for n in names if n not in self.schema.names]
        if absent:
            raise InputError(
                f"{self.path}: column(s) {', '.join(map(repr, absent))} not found; "
                f"columns: {', '.join(self.schema.names)}"
            )

    def load(
        self, column: str | None = None, extra: list[str] | tuple[str, ...] = ()
    ) -> tuple[np.ndarray, pa.Table, int]:
        """Read one embedding column as a matrix with ``extra`` columns for the same rows.

        Rows whose embedding is null (bad input rows) are skipped; their count is returned so callers can say
        so. Returns ``(matrix [n, dim] float32, table of id + extra columns, skipped)``.
        """
        column = self.embedding_column(column)
        extra = [c for c in dict.fromkeys(["id", *extra]) if c != column]
        self.require_columns(extra)
        table = self.read_table([column, *extra])
        valid = pc.is_valid(table.column(column))
        kept = table.filter(valid)
        matrix = matrix_from_arrow(kept.column(column), self.vector_encoding(column))
        return matrix, kept.select(extra), table.num_rows - kept.num_rows

    def iter_batches(
        self, column: str | None = None, extra=(), batch_rows: int = 65536
    ) -> Iterator[tuple[np.ndarray, pa.Table]]:
        """Stream ``(matrix, table of id + extra)`` for rows with an embedding, ``batch_rows`` at a time."""
        column = self.embedding_column(column)
        extra = [c for c in dict.fromkeys(["id", *extra]) if c != column]
        self.require_columns(extra)
        for table in self.iter_tables([column, *extra], batch_rows):
            kept = table.filter(pc.is_valid(table.column(column)))
            if kept.num_rows:
                yield matrix_from_arrow(kept.column(column), self.vector_encoding(column)), kept.select(extra)

    def read_table(self, columns: list[str]) -> pa.Table:
        """``columns`` of every row, as stored (null embeddings included)."""
        return _read_table(self.path, columns)

    def iter_tables(self, columns: list[str], batch_rows: int = 65536) -> Iterator[pa.Table]:
        """``columns`` of every row as stored, ``batch_rows`` at a time (memory bounded by a row group)."""
        try:
            for batch in parquet_batches(pq.ParquetFile(self.path), batch_rows, columns):
                yield pa.Table.from_batches([batch])
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{self.path}: corrupt or unreadable Parquet: {exc}") from exc


@dataclass(frozen=True)
class ShardedFeatures(Features):
    """A sharded dataset directory (:mod:`embedkit.dataset`) read as one features file, shard after shard.

    Each shard is checked against the manifest (size, sha256, rows) just before it is first read.
    """

    manifest: Any = None  # the validated DatasetManifest
    _verified: set[str] = field(default_factory=set, compare=False, repr=False)

    @property
    def shards(self) -> int:
        return len(self.manifest.shards)

    def _shard_paths(self) -> Iterator[Path]:
        from .dataset import verify_shard

        for shard in self.manifest.shards:
            if shard.file not in self._verified:
                verify_shard(self.path, shard)
                self._verified.add(shard.file)
            yield self.path / shard.file

    def read_table(self, columns: list[str]) -> pa.Table:
        return pa.concat_tables([_read_table(p, columns) for p in self._shard_paths()])

    def iter_tables(self, columns: list[str], batch_rows: int = 65536) -> Iterator[pa.Table]:
        for path in self._shard_paths():
            try:
                for batch in parquet_batches(pq.ParquetFile(path), batch_rows, columns):
                    yield pa.Table.from_batches([batch])
            except (OSError, pa.ArrowException) as exc:
                raise InputError(f"{path}: corrupt or unreadable Parquet: {exc}") from exc


def _read_table(path: Path, columns: list[str]) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: corrupt or unreadable Parquet: {exc}") from exc


def open_features(path: str | Path, *, trust_remote_code: bool = False) -> Features:
    """Open a Parquet written by ``embedkit embed`` (or the Ray engine), or a sharded dataset directory.

    ``trust_remote_code`` is the caller's decision for models loaded with these settings; the stored one is ignored.
    """
    path = Path(path)
    if path.is_dir():  # only then: embedkit.dataset loads pydantic, which a single file does not need
        from .dataset import is_dataset

        if is_dataset(path):
            return _open_dataset(path, trust_remote_code)
        raise InputError(f"{path} is a directory, not a features file or an embedkit dataset (no manifest)")
    meta = read_metadata(path)
    config = _stored_config(path, meta, trust_remote_code)
    pf = pq.ParquetFile(path)
    return Features(path=path, schema=pf.schema_arrow, meta=meta, config=config, num_rows=pf.metadata.num_rows)


def _stored_config(path: Path, meta: Any, trust_remote_code: bool) -> ExtractConfig:
    if not isinstance(meta, dict) or not isinstance(meta.get("model", {}), dict):
        raise InputError(f"{path}: the embedkit metadata is corrupt (expected a table with a 'model' table)")
    return ExtractConfig.from_stored(
        meta.get("config"),
        trust_remote_code=trust_remote_code,
        origin=f"{path} (embedkit metadata)",
        model=meta.get("model"),
    )


def _open_dataset(path: Path, trust_remote_code: bool) -> ShardedFeatures:
    from .dataset import read_manifest, shard_stat_check

    manifest = read_manifest(path)
    shard_stat_check(path, manifest)  # sizes now; each shard's sha256 before it is read
    config = _stored_config(path, manifest.features, trust_remote_code)
    # finish() wrote every shard with one schema; the first one's footer gives it.
    first = path / manifest.shards[0].file
    try:
        schema = pq.read_schema(first).remove_metadata()
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{first}: not a readable Parquet file: {exc}") from exc
    return ShardedFeatures(
        path=path, schema=schema, meta=manifest.features, config=config, num_rows=manifest.rows, manifest=manifest
    )


def describe(path: str | Path) -> dict[str, Any]:
    """What ``embedkit info`` prints: rows, columns, dimensions, status counts and extraction settings."""
    features = open_features(path)
    statuses: dict[str, int] = {}
    if "status" in features.schema.names:
        counts = pc.value_counts(features.read_table(["status"]).column("status").combine_chunks())
        statuses = {str(item["values"]): int(item["counts"]) for item in counts.to_pylist()}
    return {
        "path": str(features.path),
        "rows": features.num_rows,
        **({"shards": features.shards} if isinstance(features, ShardedFeatures) else {}),
        "columns": {f.name: str(f.type) for f in features.schema},
        "embedding_dims": {c: features.schema.field(c).type.list_size for c in features.embedding_columns},
        "status_counts": statuses,
        "config": features.config.to_dict(),
        "model": features.meta.get("model", {}),
        "created_at": features.meta.get("created_at"),
        "versions": features.meta.get("versions", {}),
    }


def with_metadata(schema: pa.Schema, meta: dict[str, Any]) -> pa.Schema:
    return schema.with_metadata({**(schema.metadata or {}), META_KEY: json.dumps(meta, sort_keys=True).encode()})


def library_versions(*packages: str) -> dict[str, str]:
    """embedkit's, Python's and the named distributions' versions, recorded in every file embedkit writes.

    Read from the installed package metadata, so recording a version never imports the package.
    """
    import sys
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    found = {"embedkit": __version__, "python": sys.version.split()[0]}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def is_features_file(path: str | Path) -> bool:
    """Whether ``path`` is a Parquet file written by ``embedkit embed`` (it carries embedkit metadata) or a sharded
    dataset directory (it holds a dataset manifest)."""
    path = Path(path)
    if path.is_dir():
        from .dataset import is_dataset

        return is_dataset(path)
    if not path.is_file() or path.suffix.lower() not in (".parquet", ".pq"):
        return False
    try:
        read_metadata(path)
    except InputError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- parts


# Fingerprint entries that list files ({"path": ..., facts...}), and how a message names one of their files.
_FILE_LISTS = {"input": "input", "model_files": "model file"}


def fingerprint_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """What differs between two resume fingerprints, leaf by leaf ("pooling: ['mean'] -> ['last']").

    A refused resume has to say which option to put back; "different settings" alone sends the user hunting.
    """
    changes = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if isinstance(before, dict) and isinstance(after, dict):
            # Extraction settings read best as the option names they are; other groups keep their name.
            changes += fingerprint_changes(before, after, "" if key == "settings" else f"{prefix}{key}.")
        elif key in _FILE_LISTS and isinstance(before, list) and isinstance(after, list):
            # Checksums and sizes mean nothing to a reader; name the files that changed, appeared or went away.
            was, now = ({f.get("path"): f for f in files} for files in (before, after))
            changes += [
                f"{_FILE_LISTS[key]} {path} "
                f"{'is new' if path not in was else 'is gone' if path not in now else 'changed'}"
                for path in sorted(set(was) | set(now))
                if was.get(path) != now.get(path)
            ]
        else:
            changes.append(f"{prefix}{key}: {before!r} -> {after!r}")
    return changes
