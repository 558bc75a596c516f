"""Inputs named by URI (file://, fsspec's memory://) read exactly as local paths, and row ranges read from marks.

The Ray engine's read tasks read one shard each with ``Source.read_range`` from the mark its counting pass
recorded; the rows (texts, ids, parse errors, line numbers in messages) must be those ``Source.batches`` gives.
"""

from __future__ import annotations

import json
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from embedkit import ExtractConfig, InputError
from embedkit.cli import cli
from embedkit.embed import embed_file
from embedkit.input_files import RemoteFile, resolve_files
from embedkit.sources import Source

fsspec = pytest.importorskip("fsspec")

ROWS = [{"rid": f"r{i}", "body": f"text number {i}, with a comma", "stars": i % 5} for i in range(23)]


def _bytes(fmt: str) -> bytes:
    """23 rows of each format, with a malformed row at row 9 for CSV and JSONL (and a blank line in JSONL)."""
    if fmt == "csv":
        lines = ["rid,body,stars"] + [f'{r["rid"]},"{r["body"]}",{r["stars"]}' for r in ROWS]
        lines[10] = "r9,too,many,fields"
        return ("\ufeff" + "\n".join(lines) + "\n").encode()
    if fmt == "jsonl":
        lines = [json.dumps(r) for r in ROWS]
        lines[9] = '{"rid": "r9", "body": broken'
        return ("\n".join(lines[:5]) + "\n\n" + "\n".join(lines[5:]) + "\n").encode()
    if fmt == "txt":
        return ("\n".join(r["body"] for r in ROWS) + "\n").encode() + b"invalid \xff utf-8\n"
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(ROWS), sink, row_group_size=4)
    return sink.getvalue().to_pybytes()


def _columns(fmt: str) -> dict:
    return {} if fmt == "txt" else {"text_column": "body", "id_column": "rid", "keep": ["stars"]}


def _rows(source: Source, rows: int = 5) -> list[tuple]:
    out = []
    for records in source.batches(rows):
        ids = records.ids.to_pylist() if isinstance(records.ids, pa.Array) else records.ids or [None] * len(records)
        keep = [v.to_pylist() if isinstance(v, pa.Array) else v for v in records.keep.values()]
        out += list(zip(records.row_numbers, records.texts, ids, records.parse_errors, *keep))
    return out


@pytest.fixture
def memory_dir():
    """A fresh directory on fsspec's in-memory filesystem (process-wide: removed afterwards)."""
    fs = fsspec.filesystem("memory")
    root = f"/embedkit-{uuid.uuid4().hex[:8]}"
    fs.mkdir(root)
    yield fs, root
    fs.rm(root, recursive=True)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "txt", "parquet"])
def test_uris_read_the_same_rows_as_local_paths(tmp_path, memory_dir, fmt):
    data = _bytes(fmt)
    local = tmp_path / f"in.{fmt}"
    local.write_bytes(data)
    fs, root = memory_dir
    fs.pipe(f"{root}/in.{fmt}", data)
    expected = _rows(Source(local, **_columns(fmt)))
    assert len(expected) == 24 if fmt == "txt" else 23
    for uri in (local.as_uri(), f"memory://{root}/in.{fmt}", f"memory://{root}", f"memory://{root}/*.{fmt}"):
        assert _rows(Source(uri, **_columns(fmt))) == expected, uri
    if fmt in ("csv", "jsonl"):  # a malformed line in a URI input is still a row, with its line number
        assert expected[9][3] is not None and "line" in expected[9][3]
    assert isinstance(resolve_files(f"memory://{root}")[0], RemoteFile)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "txt", "parquet"])
@pytest.mark.parametrize("where", ["local", "memory"])
def test_read_range_from_marks_equals_the_streamed_rows(tmp_path, memory_dir, fmt, where):
    data = _bytes(fmt)
    if where == "local":
        (tmp_path / f"in.{fmt}").write_bytes(data)
        spec = str(tmp_path / f"in.{fmt}")
    else:
        memory_dir[0].pipe(f"{memory_dir[1]}/in.{fmt}", data)
        spec = f"memory://{memory_dir[1]}/in.{fmt}"
    source = Source(spec, **_columns(fmt))
    expected = _rows(source)
    n, marks = source.count(0, 5)
    assert n == len(expected) and len(marks) == -(-n // 5)
    got = []
    for k, mark in enumerate(marks):
        records = source.read_range(0, 5 * k, min(n, 5 * k + 5), mark)
        ids = records.ids.to_pylist() if isinstance(records.ids, pa.Array) else records.ids or [None] * len(records)
        keep = [v.to_pylist() if isinstance(v, pa.Array) else v for v in records.keep.values()]
        got += list(zip(records.row_numbers, records.texts, ids, records.parse_errors, *keep))
        # Without a mark the rows before are parsed and dropped: the same rows.
        assert source.read_range(0, 5 * k, min(n, 5 * k + 5)).texts == records.texts
    assert got == expected


def test_local_engine_embeds_a_uri_input_like_its_path(tiny_gpt2_shared, tmp_path, memory_dir):
    data = _bytes("jsonl")
    (tmp_path / "in.jsonl").write_bytes(data)
    memory_dir[0].pipe(f"{memory_dir[1]}/in.jsonl", data)
    config = ExtractConfig(model=tiny_gpt2_shared)
    options = {"text_column": "body", "id_column": "rid", "device": "cpu", "progress": False}
    a = embed_file(tmp_path / "in.jsonl", tmp_path / "a.parquet", config, **options)
    b = embed_file(f"memory://{memory_dir[1]}/in.jsonl", tmp_path / "b.parquet", config, **options)
    assert a.rows == b.rows == 23 and a.bad_rows == b.bad_rows == {"malformed": 1}
    ta, tb = pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "b.parquet")
    for column in ("id", "body", "status", "error", "embedding"):
        assert ta.column(column).to_pylist() == tb.column(column).to_pylist(), column


@pytest.mark.parametrize(
    "uri, message",
    [
        ("nosuchfs://bucket/in.csv", "unknown filesystem scheme nosuchfs://"),
        ("memory:///embedkit-no-such-dir/in.csv", "does not exist"),
        ("memory:///embedkit-no-such-dir/*.csv", "no file matches"),
        ("file://somehost/in.csv", "file:///path"),
    ],
)
def test_bad_uris_are_input_errors(uri, message):
    with pytest.raises(InputError, match=message):
        Source(uri)


def test_a_missing_filesystem_library_is_named(monkeypatch):
    import fsspec.core

    def missing(url, **kwargs):
        raise ImportError("Install s3fs to access S3")

    monkeypatch.setattr(fsspec.core, "url_to_fs", missing)
    with pytest.raises(InputError, match="needs a filesystem library that is not installed: Install s3fs"):
        Source("notpyarrow-a://bucket/in.csv")


def test_cli_reads_a_file_uri_and_refuses_a_uri_output(tiny_gpt2_shared, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("one\ntwo\n", encoding="utf-8")
    result = CliRunner().invoke(
        cli, ["embed", source.as_uri(), "-o", str(tmp_path / "o.parquet"), "--model", tiny_gpt2_shared, "-q"]
    )
    assert result.exit_code == 0, result.output
    assert pq.read_table(tmp_path / "o.parquet").column("text").to_pylist() == ["one", "two"]
    result = CliRunner().invoke(
        cli, ["embed", str(source), "-o", "s3://bucket/out.parquet", "--model", tiny_gpt2_shared, "-q"]
    )
    assert result.exit_code != 0 and "local" in result.output


def test_search_queries_from_a_uri_read_through_the_same_resolution(memory_dir):
    """``search --queries`` opens its file with ``index.settings.open_queries``: a URI works there too."""
    from embedkit.index.settings import open_queries

    fs, root = memory_dir
    fs.pipe(f"{root}/q.jsonl", b'{"q": "first"}\n{"q": "second"}\n')
    source = open_queries({"input_columns": {"text": "q"}}, f"memory://{root}/q.jsonl", None, None)
    assert [t for r in source.batches() for t in r.texts] == ["first", "second"]


def test_classic_mac_line_ends_read_as_before_and_from_marks(tmp_path):
    """CSV with bare CR line ends (old spreadsheet exports): rows as a text file opened with newline="" gives them,
    and read_range from the marks, which then fall inside one LF-delimited line, gives the same rows."""
    path = tmp_path / "mac.csv"
    path.write_bytes(b"text,n\r" + b"".join(f'"row\r{i}",{i}\r'.encode() for i in range(7)) + b"tail,7\r\n")
    source = Source(path, keep=["n"])
    rows = _rows(source)
    assert [r[1] for r in rows] == [f"row\r{i}" for i in range(7)] + ["tail"]
    n, marks = source.count(0, 3)
    got = [t for k, mark in enumerate(marks) for t in source.read_range(0, 3 * k, min(n, 3 * k + 3), mark).texts]
    assert n == 8 and got == [r[1] for r in rows]
