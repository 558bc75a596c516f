"""Reading records from CSV, TSV, JSONL, Parquet and plain-text files, streamed in bounded batches.

An input is a file, a directory (every file with a known extension, sorted) or a glob. Rows are never
dropped: a record that cannot be parsed (a broken JSONL line, a CSV row with the wrong number of fields)
comes out as a row with ``parse_error`` set, so the store can record it with a status.

Text is decoded with ``surrogateescape`` so invalid UTF-8 reaches the extractor intact, where it is repaired
and recorded instead of aborting the whole file.
"""

from __future__ import annotations

import codecs
import csv
import glob
import json
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ConfigError, InputError, choice_error

FORMATS = ("csv", "tsv", "jsonl", "parquet", "txt")
EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "txt",
    ".text": "txt",
}
TXT_COLUMN = "text"

# A CSV cell may hold a whole book; the csv module's default 128 KiB field limit would abort the file.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass
class Records:
    """One batch of input rows, column-wise. ``keep`` values are lists or Arrow arrays (types kept)."""

    row_numbers: list[int]
    texts: list[object]
    ids: list[object] | pa.Array | None
    keep: dict[str, list[object] | pa.Array] = field(default_factory=dict)
    parse_errors: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)


def _kind_of(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def _regular(path: Path) -> bool:
    """True for a regular file (through symlinks); False for a directory; InputError for anything else.

    An input is read more than once (columns are checked, then rows streamed, and --resume fingerprints its
    bytes), which a pipe or a device cannot give: /dev/zero would never end, a FIFO would be drained by the first
    read. Refused by name instead of being reported as missing or silently skipped in a directory.
    """
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return stat.S_ISREG(mode)
    raise InputError(
        f"input {path} is {_kind_of(mode)}; embedkit reads regular files (it reads them more than once, and "
        "--resume checks their content), so save the data to a file first"
    )


# The manifest of a sharded features dataset (embedkit.dataset.MANIFEST_NAME; not imported here, that module loads
# pydantic): a dataset directory read as input is its shards, in order.
DATASET_MANIFEST = "_embedkit-dataset.json"


def resolve_files(spec: str | Path) -> list[Path]:
    """The files an input names: the file itself, a directory's known files, or a glob's matches."""
    path = Path(spec).expanduser()
    if _regular(path):
        return [path]
    if path.is_dir():
        files = sorted(
            p
            for p in path.iterdir()
            if not p.name.startswith(".")
            and p.name != DATASET_MANIFEST
            and p.suffix.lower() in EXTENSIONS
            and _regular(p)
        )
        if not files:
            raise InputError(f"directory {spec} holds no readable files (extensions: {', '.join(sorted(EXTENSIONS))})")
        return files
    if any(ch in str(spec) for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if _regular(Path(p)))
        if not files:
            raise InputError(f"no file matches {spec}")
        return files
    if path.is_symlink():
        raise InputError(f"input {spec} is a symbolic link to a missing file")
    raise InputError(f"input {spec} does not exist")


def detect_format(path: Path, fmt: str | None = None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise choice_error("input format", fmt, FORMATS)
        return fmt
    try:
        return EXTENSIONS[path.suffix.lower()]
    except KeyError:
        raise InputError(
            f"cannot tell the format of {path} from its extension; use one of {', '.join(sorted(EXTENSIONS))} "
            f"or pass --format ({', '.join(FORMATS)})"
        ) from None


def _missing(columns: list[str], wanted: list[str], where: Path) -> None:
    absent = [c for c in wanted if c not in columns]
    if absent:
        raise InputError(
            f"{where}: column(s) {', '.join(map(repr, absent))} not found; "
            f"the columns are: {', '.join(columns) or '(none)'}"
        )


# Columns embedkit writes itself: an input column of the same name cannot be passed through.
OUTPUT_COLUMNS = ("id", "n_tokens", "n_windows", "truncated", "status", "error")


def is_output_column(name: str) -> bool:
    return name in OUTPUT_COLUMNS or name.startswith("embedding")


class Source:
    """A readable input: validates files and columns up front, then streams ``Records`` batches.

    Args:
        spec: file, directory or glob.
        text_column: column holding the text (plain-text files have just ``text``).
        id_column: column passed through as ``id``; None numbers rows from 0 across all files.
        keep: columns passed through unchanged.
        fmt: force a format instead of reading it off the extension.
    """

    def __init__(self, spec, text_column: str = "text", id_column: str | None = None, keep=(), fmt: str | None = None):
        self.spec = str(spec)
        self.files = resolve_files(spec)
        self.formats = [detect_format(f, fmt) for f in self.files]
        self.text_column = text_column
        self.id_column = id_column
        self.keep = list(keep)
        if len(set(self.keep)) != len(self.keep):
            raise ConfigError(f"--keep names a column twice: {', '.join(self.keep)}")
        clash = [c for c in self.keep if is_output_column(c)]
        if clash:
            raise ConfigError(f"--keep column(s) {', '.join(clash)} clash with embedkit's own output columns")
        for path, kind in zip(self.files, self.formats):
            self._check_columns(path, kind)

    def _wanted(self) -> list[str]:
        # Once each: the text column is usually also stored (kept), and a missing column is named once.
        return list(dict.fromkeys([self.text_column, *([self.id_column] if self.id_column else []), *self.keep]))

    def _check_columns(self, path: Path, kind: str) -> None:
        if path.stat().st_size == 0:
            raise InputError(f"{path} is empty")
        if kind == "txt":
            extra = [c for c in self._wanted() if c != TXT_COLUMN]
            if extra:
                raise InputError(f"{path} is plain text (one text per line); it has no column {extra[0]!r}")
            return
        _missing(self._columns_of(path, kind), self._wanted(), path)

    def _columns_of(self, path: Path, kind: str) -> list[str]:
        if kind == "parquet":
            return _parquet_file(path).schema_arrow.names
        if kind in ("csv", "tsv"):
            with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
                header = next(csv.reader(f, delimiter="\t" if kind == "tsv" else ","), None)
            if not header:
                raise InputError(f"{path} has no header row")
            return header
        for _number, line in _jsonl_lines(path):
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError):  # nested past the parser's limit is malformed too
                continue
            if isinstance(obj, dict):
                return list(obj)
        raise InputError(f"{path} holds no JSON object on any line (expected JSON Lines: one object per line)")

    def total_rows(self) -> int | None:
        """Row count when it is known without reading the data (Parquet only), for progress bars."""
        if all(k == "parquet" for k in self.formats):
            return sum(_parquet_file(p).metadata.num_rows for p in self.files)
        return None

    def batches(self, rows: int = 4096, skip: int = 0) -> Iterator[Records]:
        """Stream ``Records`` of at most ``rows`` rows, skipping the first ``skip`` rows (for --resume)."""
        row_number = 0
        pending = _Batcher(rows, self)
        for path, kind in zip(self.files, self.formats):
            reader = {
                "csv": self._read_csv,
                "tsv": self._read_csv,
                "jsonl": self._read_jsonl,
                "txt": self._read_txt,
                "parquet": self._read_parquet,
            }[kind]
            for chunk in reader(path, kind, rows):
                n = len(chunk["text"])
                if row_number + n <= skip:
                    row_number += n
                    continue
                start = max(0, skip - row_number)
                yield from pending.add(chunk, row_number, start)
                row_number += n
        yield from pending.flush()

    # Each reader yields dict chunks: text, id, keep columns, parse_error (lists or Arrow arrays).

    def _row_dict(self, get, error):
        return {
            "text": get(self.text_column),
            "id": get(self.id_column) if self.id_column else None,
            "keep": {c: get(c) for c in self.keep},
            "parse_error": error,
        }

    def _read_csv(self, path: Path, kind: str, rows: int):
        try:
            with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
                reader = csv.reader(f, delimiter="\t" if kind == "tsv" else ",")
                header = next(reader)
                index = {name: i for i, name in enumerate(header)}
                chunk = _empty_chunk(self)
                for line_no, row in enumerate(reader, start=2):
                    if not row:  # a blank line is not a record
                        continue
                    error = None
                    if len(row) != len(header):
                        error = f"line {line_no}: {len(row)} fields where the header has {len(header)}"
                    # _row_dict calls the lambda before returning, in this iteration: the late binding B023
                    # warns about cannot happen.
                    _append(chunk, self._row_dict(lambda c: row[index[c]] if index[c] < len(row) else None, error))  # noqa: B023
                    if len(chunk["text"]) >= rows:
                        yield chunk
                        chunk = _empty_chunk(self)
                if chunk["text"]:
                    yield chunk
        except csv.Error as exc:
            raise InputError(f"{path}: not valid {kind.upper()}: {exc}") from exc

    def _read_jsonl(self, path: Path, kind: str, rows: int):
        chunk = _empty_chunk(self)
        for line_no, line in _jsonl_lines(path):
            obj, error = None, None
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    error = f"line {line_no}: a JSON {type(obj).__name__}, not an object"
            except json.JSONDecodeError as exc:
                error = f"line {line_no}: malformed JSON ({exc.msg})"
            except RecursionError:
                error = f"line {line_no}: malformed JSON (nested too deeply)"
            record = obj if error is None and isinstance(obj, dict) else {}  # a dict exactly when there is no error
            _append(chunk, self._row_dict(record.get, error))
            if len(chunk["text"]) >= rows:
                yield chunk
                chunk = _empty_chunk(self)
        if chunk["text"]:
            yield chunk

    def _read_txt(self, path: Path, kind: str, rows: int):
        chunk = _empty_chunk(self)
        with path.open("rb") as f:
            for number, raw in enumerate(f):
                if number == 0 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8) :]  # a byte-order mark is not part of the first text
                line = raw.rstrip(b"\r\n").decode("utf-8", errors="surrogateescape")
                # The one column is "text": --keep text and --id-column text pass the line itself through.
                _append(chunk, self._row_dict(lambda _column: line, None))  # noqa: B023 (called at once, as above)
                if len(chunk["text"]) >= rows:
                    yield chunk
                    chunk = _empty_chunk(self)
        if chunk["text"]:
            yield chunk

    def _read_parquet(self, path: Path, kind: str, rows: int):
        columns = list(dict.fromkeys(self._wanted()))
        try:
            for batch in parquet_batches(_parquet_file(path), rows, columns):
                n = batch.num_rows
                yield {
                    "text": _text_values(batch.column(self.text_column)),
                    "id": batch.column(self.id_column) if self.id_column else None,
                    "keep": {c: batch.column(c) for c in self.keep},
                    "parse_error": [None] * n,
                }
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{path}: corrupt or unreadable Parquet: {exc}") from exc


def parquet_batches(pf: pq.ParquetFile, batch_rows: int, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """``pf.iter_batches`` one row group at a time, so memory stays bounded by a row group, not by the file.

    Over all row groups at once, pyarrow's reader kept what it had read: iterating a 2.9 GB file of 768-d
    vectors peaked at 3.9 GB of RSS, against 1.2 GB one row group at a time. Batches do not span row groups.
    """
    for group in range(pf.metadata.num_row_groups):
        yield from pf.iter_batches(batch_size=batch_rows, columns=columns, row_groups=[group])


def _text_values(column: pa.Array) -> list[object]:
    """Python values of a text column. Strings come out as bytes when they hold invalid UTF-8.

    Parquet writers do not all validate UTF-8, and pyarrow's ``to_pylist`` raises on the first bad string; as
    bytes, the extractor repairs and records the row (status ``repaired``) as it does for CSV and JSONL.
    """
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        try:
            column.validate(full=True)
        except pa.ArrowInvalid:
            binary = pa.binary() if pa.types.is_string(column.type) else pa.large_binary()
            return column.view(binary).to_pylist()
    return column.to_pylist()


def utf8_path(path: Path) -> bool:
    """Whether a path's bytes are UTF-8: Arrow takes file names as UTF-8 only (others arrive as surrogates)."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _parquet_file(path: Path) -> pq.ParquetFile:
    try:
        # A name that is not UTF-8 is opened by Python, which takes any bytes, and handed to Arrow as a file.
        return pq.ParquetFile(path if utf8_path(path) else path.open("rb"))
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable Parquet file (corrupt or truncated?): {exc}") from exc


def _jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open("rb") as f:
        head = f.read(64).lstrip()
        if head.startswith(b"["):
            raise InputError(f"{path} is a JSON array; embedkit reads JSON Lines (one object per line)")
        f.seek(0)
        for line_no, raw in enumerate(f, start=1):
            line = raw.decode("utf-8", errors="surrogateescape").strip()
            if line.startswith("\ufeff"):
                line = line[1:]
            if line:
                yield line_no, line


def _empty_chunk(source: Source) -> dict:
    return {"text": [], "id": [] if source.id_column else None, "keep": {c: [] for c in source.keep}, "parse_error": []}


def _append(chunk: dict, row: dict) -> None:
    chunk["text"].append(row["text"])
    if chunk["id"] is not None:
        chunk["id"].append(row["id"])
    for c, v in row["keep"].items():
        chunk["keep"][c].append(v)
    chunk["parse_error"].append(row["parse_error"])


def _take(values, start: int, stop: int):
    return values.slice(start, stop - start) if isinstance(values, pa.Array) else values[start:stop]


def _concat(parts: list):
    if isinstance(parts[0], pa.Array):
        return pa.concat_arrays([p.cast(parts[0].type) for p in parts])
    return [v for p in parts for v in p]


class _Batcher:
    """Re-cuts reader chunks (per file, any size) into batches of exactly ``rows`` rows across files."""

    def __init__(self, rows: int, source: Source) -> None:
        self.rows, self.source = rows, source
        self.parts: list[tuple[dict, int, int, int]] = []  # (chunk, first row number, start, stop)
        self.size = 0

    def add(self, chunk: dict, first_row: int, start: int) -> Iterator[Records]:
        n = len(chunk["text"])
        while start < n:
            stop = min(n, start + self.rows - self.size)
            self.parts.append((chunk, first_row, start, stop))
            self.size += stop - start
            start = stop
            if self.size == self.rows:
                yield self._emit()

    def flush(self) -> Iterator[Records]:
        if self.size:
            yield self._emit()

    def _emit(self) -> Records:
        parts, self.parts, self.size = self.parts, [], 0

        def gather(get):
            return _concat([_take(get(c), a, b) for c, _, a, b in parts])

        return Records(
            row_numbers=[first + i for _, first, a, b in parts for i in range(a, b)],
            texts=gather(lambda c: c["text"]),
            ids=gather(lambda c: c["id"]) if self.source.id_column else None,
            keep={k: gather(lambda c, k=k: c["keep"][k]) for k in self.source.keep},
            parse_errors=gather(lambda c: c["parse_error"]),
        )
