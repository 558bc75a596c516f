"""Where the input files are: local paths, or URIs of any filesystem pyarrow (or fsspec) reaches.

An input names a file, a directory (its files with a known extension, sorted) or a glob. A local path (or a
``file://`` URI) gives ``Path`` objects, checked as before (FIFOs and devices refused by name). Any other URI
(``s3://``, ``gs://``, ``hdfs://``, ``abfs://``, and fsspec's own schemes such as ``memory://`` when fsspec is
installed) is resolved once here with ``pyarrow.fs.FileSystem.from_uri``, falling back to fsspec through
``pyarrow.fs.PyFileSystem(FSSpecHandler(...))``; it gives :class:`RemoteFile` objects, which hold only strings
(so they travel to Ray workers, which resolve the filesystem again there) and open through the filesystem.
Every stage that reads input text goes through :func:`resolve_files` and :func:`open_binary`, so all of them
read URIs the same way.

Outputs stay local (or shared POSIX) paths: locks and atomic renames need a real filesystem.
"""

from __future__ import annotations

import fnmatch
import functools
import glob
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import unquote, urlparse

from .errors import InputError

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
# The manifest of a sharded features dataset (embedkit.dataset.MANIFEST_NAME; not imported here, that module loads
# pydantic): a dataset directory read as input is its shards, in order.
DATASET_MANIFEST = "_embedkit-dataset.json"
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# Line reads from a filesystem stream: pyarrow's files have no readline, so lines are cut from blocks of this size.
_BLOCK = 1 << 20


def uri_scheme(spec: str | Path) -> str | None:
    """The scheme of a URI (``s3``), or None for a plain path."""
    match = _URI.match(str(spec)) if isinstance(spec, str) else None
    return match.group(1).lower() if match else None


@dataclass(frozen=True)
class RemoteFile:
    """One input file on a non-local filesystem: ``root`` (the URI the input named, which resolves the
    filesystem) and ``path`` inside it. Strings only: it pickles to a Ray worker, which opens it there."""

    root: str
    path: str
    size: int
    mtime_ns: int | None = None

    @property
    def uri(self) -> str:
        # pyarrow's paths start with the bucket (s3, gs); fsspec's are absolute (memory:///dir/file).
        return f"{uri_scheme(self.root)}://{self.path}"

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.path).suffix

    def open(self) -> Any:
        """A seekable binary stream (``pyarrow.NativeFile``)."""
        fs, _ = filesystem(self.root)
        try:
            return fs.open_input_file(self.path)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot open {self}: {_first_line(exc)}") from exc

    def __str__(self) -> str:
        return self.uri


InputFile = Path | RemoteFile


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@functools.lru_cache(maxsize=32)
def filesystem(uri: str) -> tuple[Any, str]:
    """``(pyarrow FileSystem, path in it)`` for a URI: pyarrow's own filesystems first, else fsspec's.

    Raises InputError for a scheme neither knows, a filesystem whose library is not installed (libhdfs, gcsfs,
    s3fs...), or one that cannot be reached.
    """
    import pyarrow as pa
    import pyarrow.fs as pafs

    scheme = uri_scheme(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except pa.ArrowInvalid:
        pass  # a scheme pyarrow does not know: fsspec may
    except (OSError, pa.ArrowException) as exc:  # e.g. HDFS without libjvm/libhdfs, S3 bucket unreachable
        raise InputError(
            f"cannot use the {scheme}:// filesystem for {uri}: {_first_line(exc)} (is its library installed and the "
            "storage reachable from here?)"
        ) from exc
    try:
        import fsspec.core  # type: ignore[import-untyped]
    except ImportError:
        raise InputError(
            f"unknown filesystem scheme {scheme}:// in {uri}: pyarrow does not read it, and fsspec (which knows more "
            "schemes) is not installed: pip install fsspec"
        ) from None
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except ImportError as exc:  # fsspec knows the scheme, its implementation package is missing
        raise InputError(f"{scheme}:// needs a filesystem library that is not installed: {exc}") from exc
    except ValueError as exc:
        raise InputError(f"unknown filesystem scheme {scheme}:// in {uri} ({exc})") from exc
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def local_path(spec: str | Path) -> Path | None:
    """The local path a spec names (a path, or a ``file://`` URI), or None for another filesystem's URI."""
    scheme = uri_scheme(spec)
    if scheme is None:
        return Path(spec).expanduser()
    if scheme == "file":
        parsed = urlparse(str(spec))
        if parsed.netloc not in ("", "localhost"):
            raise InputError(f"{spec}: a file:// URI names a file on this machine (file:///path), not on a host")
        return Path(unquote(parsed.path))
    return None


def resolve_files(spec: str | Path) -> list[InputFile]:
    """The files an input names: the file itself, a directory's known files, or a glob's matches."""
    path = local_path(spec)
    return _local_files(spec, path) if path is not None else _remote_files(str(spec))


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


def _known(name: str) -> bool:
    return not name.startswith(".") and name != DATASET_MANIFEST and PurePosixPath(name).suffix.lower() in EXTENSIONS


def _local_files(spec: str | Path, path: Path) -> list[InputFile]:
    if _regular(path):
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if _known(p.name) and _regular(p))
        if not files:
            raise InputError(f"directory {spec} holds no readable files (extensions: {', '.join(sorted(EXTENSIONS))})")
        return list(files)
    if any(ch in str(path) for ch in "*?["):
        matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if _regular(Path(p)))
        if not matches:
            raise InputError(f"no file matches {spec}")
        return list(matches)
    if path.is_symlink():
        raise InputError(f"input {spec} is a symbolic link to a missing file")
    raise InputError(f"input {spec} does not exist")


def _remote_files(uri: str) -> list[InputFile]:
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)

    def info(selector_or_path):
        try:
            return fs.get_file_info(selector_or_path)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot list {uri}: {_first_line(exc)}") from exc

    def remote(entry) -> RemoteFile:
        mtime = entry.mtime_ns if entry.mtime is not None else None
        return RemoteFile(uri, entry.path, int(entry.size or 0), mtime)

    glob_at = min((path.find(ch) for ch in "*?[" if ch in path), default=-1)
    if glob_at < 0:
        entry = info(path)
        if entry.type == pafs.FileType.File:
            return [remote(entry)]
        if entry.type == pafs.FileType.Directory:
            entries = info(pafs.FileSelector(path, recursive=False))
            files = sorted(
                (remote(e) for e in entries if e.type == pafs.FileType.File and _known(e.base_name)),
                key=lambda f: f.path,
            )
            if not files:
                raise InputError(
                    f"directory {uri} holds no readable files (extensions: {', '.join(sorted(EXTENSIONS))})"
                )
            return list(files)
        raise InputError(f"input {uri} does not exist")
    base = path[:glob_at].rpartition("/")[0]
    pattern = path
    # fnmatch's * also crosses "/": a glob with one wildcard component matches only that level, below it all.
    recursive = "**" in path or "/" in path[glob_at:]
    entries = info(pafs.FileSelector(base or "/", recursive=recursive, allow_not_found=True))
    matches = sorted(
        (remote(e) for e in entries if e.type == pafs.FileType.File and fnmatch.fnmatchcase(e.path, pattern)),
        key=lambda f: f.path,
    )
    if not matches:
        raise InputError(f"no file matches {uri}")
    return list(matches)


def file_size(file: InputFile) -> int:
    return file.size if isinstance(file, RemoteFile) else file.stat().st_size


def file_digest(file: InputFile) -> dict[str, str]:
    """Path (or URI) and sha256 of an input file: what a resumed local run checks its input against."""
    if isinstance(file, RemoteFile):
        import hashlib

        digest = hashlib.sha256()
        with file.open() as f:
            while block := f.read(_BLOCK):
                digest.update(block)
        return {"path": file.uri, "sha256": digest.hexdigest()}
    from .artefact import sha256_file

    return {"path": str(file.resolve()), "sha256": sha256_file(file)}


def refuse_uri_output(output: str | Path) -> None:
    """ConfigError for an output named by URI: outputs are written under a lock and land by an atomic rename,
    which only a local or shared POSIX filesystem gives."""
    from .errors import ConfigError

    scheme = uri_scheme(str(output))
    if scheme is not None:
        raise ConfigError(
            f"-o {output}: outputs are local or shared POSIX paths (a lock and an atomic rename land each one), not "
            f"{scheme}:// URIs; write to a local or mounted directory and copy the result over afterwards"
        )


def open_binary(file: InputFile) -> IO[bytes] | Any:
    """A seekable binary stream of an input file (a Python file, or a pyarrow NativeFile for a URI)."""
    return file.open() if isinstance(file, RemoteFile) else file.open("rb")


def raw_lines(stream, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """``(byte offset, line)`` of each line of a binary stream from ``offset`` on, the line with its ``\\n``.

    Offsets let a reader start later at a row's first byte (the Ray engine's shards) instead of parsing the
    file from the start. Python files cut lines in C; pyarrow's streams have no readline, so blocks are cut here.
    """
    if offset:
        stream.seek(offset)
    position = offset
    if hasattr(stream, "readline") and not _is_native(stream):
        for line in stream:
            yield position, line
            position += len(line)
        return
    pieces: list[bytes] = []
    while block := stream.read(_BLOCK):
        start = 0
        while (end := block.find(b"\n", start)) >= 0:
            line = b"".join([*pieces, block[start : end + 1]]) if pieces else block[start : end + 1]
            pieces = []
            yield position, line
            position += len(line)
            start = end + 1
        if start < len(block):
            pieces.append(block[start:])
    if pieces:
        yield position, b"".join(pieces)


def _is_native(stream) -> bool:
    import pyarrow as pa

    return isinstance(stream, pa.NativeFile)


__all__ = [
    "DATASET_MANIFEST",
    "EXTENSIONS",
    "InputFile",
    "RemoteFile",
    "file_digest",
    "file_size",
    "filesystem",
    "local_path",
    "open_binary",
    "raw_lines",
    "refuse_uri_output",
    "resolve_files",
    "uri_scheme",
]
