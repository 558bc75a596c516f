"""The index directory format: manifest fields, reading and verifying a generation, writing the data files."""

from __future__ import annotations

import os
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import artefact
from ..config import ExtractConfig
from ..errors import IncompatibleError, InputError, OutputError
from .faiss_ops import _faiss, _hnsw_of, _ivf_of, _metric_type
from .live import DELETED_FILE, read_deleted, write_deleted
from .plan import KINDS, METRICS

META_FILE = "index.json"  # the artefact manifest

INDEX_FORMAT = 2  # 1: data files named index-N.faiss / ids-N.parquet by index.json, still read
# An index with deleted rows not yet compacted: an embedkit that does not know deleted.parquet would return them.
DELETED_FORMAT = 3

ARTEFACT_KIND = "embedkit-index"

INDEX_FILE, IDS_FILE = "index.faiss", "ids.parquet"

PARAM_NAMES = ("nprobe", "efSearch")

MAX_STORED_EF_SEARCH = 1 << 16  # tuning stops at 2048; a larger stored value is hostile (it sizes search buffers)

MAX_DIM = 1 << 20


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _named(directory: str | Path) -> Path:
    """``directory`` with a name of its own: ``.`` or ``x/..`` made absolute (symlinks are left alone).

    The lock and the directory built aside sit beside the output under its name; for ``.`` they would land inside
    it (a lock no other writer of the same index takes) and the switch by rename would fail.
    """
    directory = Path(directory)
    return Path(os.path.abspath(directory)) if directory.name in ("", ".", "..") else directory


def _write_data(stage: artefact.Staging, index, ids: pa.Table, deleted: np.ndarray | None = None) -> int:
    """Write the FAISS index, the id map and the deleted rows (if any) aside; returns the index's size in bytes."""
    index_path = stage.path(INDEX_FILE)
    try:
        _faiss().write_index(index, str(index_path))
    except RuntimeError as exc:  # FAISS reports a failed write (disk full, ...) as a RuntimeError
        raise OutputError(f"cannot write {index_path}: {exc}") from exc
    pq.write_table(ids, stage.path(IDS_FILE))
    if deleted is not None and len(deleted):
        write_deleted(stage.path(DELETED_FILE), deleted)
    return index_path.stat().st_size


def _manifest_bytes(directory: Path) -> bytes | None:
    """The raw ``index.json`` (None when absent or not a plain file): compared before and after a read."""
    path = directory / META_FILE
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > artefact.MAX_MANIFEST_BYTES:
            return None
        return path.read_bytes()
    except OSError:
        return None


def _read_index(directory: Path) -> tuple[Any, pa.Table, dict[str, Any], np.ndarray]:
    """Read one generation: checked manifest, verified files, then FAISS index and id map cross-checked with it."""
    meta, (index_name, ids_name) = _checked_meta(
        directory, artefact.read_manifest(directory, manifest_name=META_FILE, what="index")
    )
    index_path = directory / index_name
    try:
        index = _faiss().read_index(str(index_path))
    except RuntimeError as exc:
        raise InputError(f"{index_path}: FAISS cannot read it: {exc}") from exc
    _check_against_faiss(directory / META_FILE, meta, index, index_name)
    try:
        # One file: ParquetFile reads it without pyarrow.dataset, whose import pulls in pandas (~0.2 s of a cold
        # `search`, #23); read_table goes through the dataset API.
        with pq.ParquetFile(directory / ids_name) as ids_file:
            ids = ids_file.read()
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{directory}: the id map {ids_name} is unreadable: {exc}") from exc
    if len(set(ids.column_names)) != len(ids.column_names):  # read_table refused these; ParquetFile reads them
        raise InputError(f"{directory}: the id map {ids_name} is unreadable: it names a column twice")
    if "id" not in ids.column_names:
        raise InputError(f"{directory}: the id map {ids_name} has no 'id' column; rebuild the index")
    id_type = ids.schema.field("id").type
    if pa.types.is_nested(id_type) or pa.types.is_dictionary(id_type) or ids.column("id").null_count:
        # Search maps ids back through a dict: a list/struct id (unhashable) or a null one would fail there.
        raise InputError(
            f"{directory}: the id map {ids_name} holds null or {id_type} ids, which embedkit never "
            "writes; rebuild the index"
        )
    if ids.num_rows != index.ntotal:
        raise InputError(
            f"{directory}: the index holds {index.ntotal} vectors but the id map {ids.num_rows} rows; rebuild it"
        )
    stored = [c for c in ids.column_names if c != "id"]
    if stored != meta["stored_columns"]:
        raise InputError(
            f"{directory / META_FILE}: 'stored_columns' is {meta['stored_columns']!r} but the id map "
            f"holds {stored!r}; rebuild the index"
        )
    if meta.get("text_column") is not None and meta["text_column"] not in stored:
        raise _field_error(
            directory / META_FILE, "text_column", meta["text_column"], "null or one of the stored columns"
        )
    deleted = np.empty(0, dtype=np.int64)
    if meta["format"] == DELETED_FORMAT:
        if DELETED_FILE not in meta["files"]:
            raise InputError(
                f"{directory / META_FILE}: format {DELETED_FORMAT} without {DELETED_FILE}; rebuild the index"
            )
        deleted = read_deleted(directory / DELETED_FILE, index.ntotal)
    return index, ids, meta, deleted


def _checked_meta(directory: Path, manifest: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, str]]:
    """Check every field the code uses and verify every file; returns the meta and the two data file names.

    A format-1 index names its data files in ``files.index.name`` / ``files.ids.name``: those names get the same
    plain-name rule as any manifest entry, so none leads outside the directory.
    """
    where = directory / META_FILE
    fmt = manifest.get("format")
    if not _is_int(fmt):
        raise _field_error(where, "format", fmt, "an index format number")
    if fmt not in (1, INDEX_FORMAT, DELETED_FORMAT):
        raise IncompatibleError(
            f"{directory} has index format {fmt}; this embedkit reads formats 1 to "
            f"{DELETED_FORMAT}: upgrade embedkit or rebuild the index"
        )
    meta = dict(manifest)
    if fmt == 1:
        entries, names = {}, []
        for role in ("index", "ids"):
            entry = manifest["files"].get(role)
            if not isinstance(entry, dict):
                raise _field_error(where, f"files.{role}", entry, "the entry of the index's data file")
            name = artefact.plain_name(entry.get("name"), where=where)
            entries[name] = entry  # read_manifest checked its sha256 and byte count
            names.append(name)
        if names[0] == names[1]:
            raise _field_error(where, "files", manifest["files"], "two different data files")
        meta["index_kind"], meta["kind"] = manifest.get("kind"), ARTEFACT_KIND  # format 1 had the FAISS kind here
    else:
        if meta.get("kind") != ARTEFACT_KIND:
            raise _field_error(where, "kind", meta.get("kind"), f"{ARTEFACT_KIND!r} (is this an embedkit index?)")
        entries, names = manifest["files"], [INDEX_FILE, IDS_FILE]
        for name in names:
            if name not in entries:
                raise InputError(f"{where}: {name} is not listed in 'files'; the index is incomplete: rebuild it")
    _check_fields(meta, where)
    for name, entry in entries.items():
        artefact.verify_file(directory / name, entry, META_FILE)
    return meta, (names[0], names[1])


def _check_fields(meta: dict[str, Any], where: Path) -> None:
    """InputError naming the first field of ``index.json`` that the code would trip over."""
    checks: list[tuple[str, Any, bool, str]] = [
        ("index_kind", meta.get("index_kind"), meta.get("index_kind") in KINDS[1:], f"one of {', '.join(KINDS[1:])}"),
        ("metric", meta.get("metric"), meta.get("metric") in METRICS, f"one of {', '.join(METRICS)}"),
        (
            "dim",
            meta.get("dim"),
            _is_int(meta.get("dim")) and 0 < meta["dim"] <= MAX_DIM,
            f"a dimension from 1 to {MAX_DIM}",
        ),
        ("rows", meta.get("rows"), _is_int(meta.get("rows")) and meta["rows"] >= 0, "a row count"),
        (
            "column",
            meta.get("column"),
            isinstance(meta.get("column"), str) and meta["column"] != "",
            "the name of the indexed column",
        ),
        (
            "stored_columns",
            meta.get("stored_columns"),
            _is_names(meta.get("stored_columns")),
            "a list of distinct column names other than 'id'",
        ),
        (
            "params",
            meta.get("params"),
            isinstance(meta.get("params"), dict),
            "an object of search parameters (nprobe, efSearch)",
        ),
        (
            "generation",
            meta.get("generation"),
            _is_int(meta.get("generation", 0)) and meta.get("generation", 0) >= 0,
            "a generation number",
        ),
        (
            "build",
            meta.get("build"),
            isinstance(meta.get("build", {}), dict) and isinstance(meta.get("build", {}).get("adds", []), list),
            "an object whose 'adds' is a list",
        ),
        ("config", meta.get("config"), isinstance(meta.get("config"), dict), "the extraction settings"),
        # Optional (indexes built before they were recorded lack them): where search finds text to show / read.
        (
            "text_column",
            meta.get("text_column"),
            meta.get("text_column") is None or isinstance(meta["text_column"], str),
            "null or the name of a stored column",
        ),
        (
            "input_columns",
            meta.get("input_columns"),
            _is_column_names(meta.get("input_columns", {})),
            "an object with the input's 'text' and 'id' column names (strings or null)",
        ),
    ]
    for name, value, ok, want in checks:
        if not ok:
            raise _field_error(where, name, value, want)
    for name, value in meta["params"].items():
        limit = MAX_STORED_EF_SEARCH if name == "efSearch" else 2**31 - 1
        if name not in PARAM_NAMES or not _is_int(value) or not 1 <= value <= limit:
            raise _field_error(
                where, f"params.{name}", value, f"a search parameter ({', '.join(PARAM_NAMES)}) from 1 to {limit}"
            )
    # The one reader of stored settings: strict types, and a stored trust_remote_code never counts.
    ExtractConfig.from_stored(meta["config"], origin=f"{where} field 'config'", model=meta.get("model"))


def _check_against_faiss(where: Path, meta: dict[str, Any], index, name: str) -> None:
    """The fields of ``index.json`` that describe the FAISS index must describe this one."""
    if index.d != meta["dim"]:
        raise InputError(
            f"{where}: 'dim' is {meta['dim']} but {name} holds {index.d}-d vectors; the index is "
            "corrupt or was edited by hand: rebuild it"
        )
    if index.metric_type != _metric_type(meta["metric"]):
        ranks = "L2 distance" if index.metric_type == _faiss().METRIC_L2 else "inner product"
        raise InputError(
            f"{where}: 'metric' is {meta['metric']!r} but {name} ranks by {ranks}; the index is corrupt "
            "or was edited by hand: rebuild it"
        )
    if index.ntotal != meta["rows"]:
        raise InputError(
            f"{where}: 'rows' is {meta['rows']} but {name} holds {index.ntotal} vectors; the index is "
            "corrupt or was edited by hand: rebuild it"
        )
    for param, value in meta["params"].items():
        ivf = _ivf_of(index) if param == "nprobe" else None
        if param == "nprobe" and (ivf is None or value > ivf.nlist) or param == "efSearch" and _hnsw_of(index) is None:
            raise InputError(
                f"{where}: 'params.{param}' = {value} does not fit {name} ({type(index).__name__}); rebuild the index"
            )


def _field_error(where: Path, name: str, value: Any, want: str) -> InputError:
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    state = "missing" if value is None else f"{shown}"
    return InputError(
        f"{where}: field {name!r} is {state}; expected {want}. The index is corrupt or was edited by hand: rebuild it"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_column_names(value: Any) -> bool:
    return isinstance(value, dict) and all(
        key in ("text", "id") and (v is None or isinstance(v, str) and v) for key, v in value.items()
    )


def _is_names(value: Any) -> bool:
    return (
        isinstance(value, list)
        and all(isinstance(v, str) and v and v != "id" for v in value)
        and len(set(value)) == len(value)
    )
