"""The bad-input matrix, end to end through the CLI: a clear message or a recorded status row, never a
traceback, and rows out == rows in. The README's "Bad input" table lists the same cases and outcomes."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from embedkit.cli import cli


def embed(tmp_path, model, source, *extra):
    out = tmp_path / "out.parquet"
    result = CliRunner().invoke(cli, ["embed", str(source), "-o", str(out), "-m", model, "-q", "--overwrite", *extra])
    assert "Traceback" not in result.output
    return result, out


# (case, JSONL line, expected status, expected truncated)
ROW_CASES = [
    ("plain", json.dumps({"text": "a normal sentence"}), "ok"),
    ("empty string", json.dumps({"text": ""}), "empty"),
    ("whitespace only", json.dumps({"text": " \t\n "}), "empty"),
    ("null", json.dumps({"text": None}), "null"),
    ("NaN", '{"text": NaN}', "null"),
    ("missing key", json.dumps({"other": 1}), "null"),
    ("number", json.dumps({"text": 42}), "not_string"),
    ("list", json.dumps({"text": ["a", "b"]}), "not_string"),
    ("lone surrogate", '{"text": "half \\ud800 pair"}', "repaired"),
    ("NUL and control chars", json.dumps({"text": "nul\u0000 bell\u0007 esc\u001b"}), "ok"),
    ("emoji CJK RTL", json.dumps({"text": "😀 漢字テスト שלום عليكم"}), "ok"),
    ("malformed line", '{"text": "unterminated', "malformed"),
    ("not an object", "[1, 2, 3]", "malformed"),
]


def test_row_level_cases_in_jsonl(tmp_path, tiny_gpt2_shared):
    path = tmp_path / "cases.jsonl"
    lines = [line for _, line, _ in ROW_CASES]
    raw = "\n".join(lines).encode("utf-8") + b'\n{"text": "invalid \xff\xfe utf-8"}\n'
    path.write_bytes(raw)
    result, out = embed(tmp_path, tiny_gpt2_shared, path)
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.num_rows == len(ROW_CASES) + 1  # rows out == rows in
    statuses = table.column("status").to_pylist()
    assert statuses == [status for _, _, status in ROW_CASES] + ["repaired"]
    embedded = table.column("embedding").to_pylist()
    for status, vector, error in zip(statuses, embedded, table.column("error").to_pylist()):
        assert (vector is not None) == (status in ("ok", "repaired"))
        assert (error is None) == (status == "ok")


def test_invalid_utf8_and_controls_in_csv(tmp_path, tiny_gpt2_shared):
    path = tmp_path / "cases.csv"
    path.write_bytes(
        b'id,text\n1,"bad \xff\xfe bytes"\n2,""\n3,"nul \x00 inside"\n4,"  "\n5,"\xe2\x80\xae RTL override"\n'
    )
    result, out = embed(tmp_path, tiny_gpt2_shared, path, "--id-column", "id")
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == ["1", "2", "3", "4", "5"]
    assert table.column("status").to_pylist() == ["repaired", "empty", "ok", "empty", "ok"]
    assert (
        "2 kept with a null embedding (2 empty)" in result.output and "1 with invalid UTF-8 repaired" in result.output
    )


# Truncate mode reads a long text only as far as its first max_length tokens (status cut, n_tokens counts the
# tokens read); chunk mode reads all of it while it fits MAX_CHUNK_WINDOWS windows.
@pytest.mark.parametrize(
    "mode, status, truncated, min_windows, min_tokens",
    [("truncate", "cut", True, 1, 1024), ("chunk", "ok", False, 100, 100_000)],
)
def test_a_text_of_a_million_characters(tmp_path, tiny_gpt2_shared, mode, status, truncated, min_windows, min_tokens):
    path = tmp_path / "huge.jsonl"
    path.write_text(json.dumps({"text": "word " * 200_000}) + "\n" + json.dumps({"text": "short"}) + "\n")
    result, out = embed(tmp_path, tiny_gpt2_shared, path, "--long-text", mode)
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column("status").to_pylist() == [status, "ok"]
    assert table.column("truncated").to_pylist() == [truncated, False]
    assert table.column("n_windows")[0].as_py() >= min_windows
    assert table.column("n_tokens")[0].as_py() > min_tokens
    assert table.column("embedding").null_count == 0


def test_duplicate_ids_are_kept_and_reported(tmp_path, tiny_gpt2_shared):
    path = tmp_path / "dups.csv"
    path.write_text("id,text\na,one\na,two\nb,three\n")
    result, out = embed(tmp_path, tiny_gpt2_shared, path, "--id-column", "id")
    assert result.exit_code == 0 and "warning: 1 duplicate ids" in result.output
    assert pq.read_table(out).column("id").to_pylist() == ["a", "a", "b"]


def _file(directory, name, content):
    path = directory / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _truncated_parquet(directory):
    path = directory / "in.parquet"
    pq.write_table(pa.table({"text": ["a text"] * 50}), path)
    return _file(directory, "in.parquet", path.read_bytes()[:-30])


def _corrupt_pages_parquet(directory):
    # The footer is intact, so the file opens and its columns check out; the text column's pages are garbage,
    # which shows only once the rows are read, after the run has started.
    path = directory / "in.parquet"
    pq.write_table(pa.table({"id": list(range(100)), "text": [f"text number {i}" for i in range(100)]}), path)
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(1)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(path.read_bytes())
    data[start + 30 : start + chunk.total_compressed_size - 10] = b"\x07" * (chunk.total_compressed_size - 40)
    return _file(directory, "in.parquet", bytes(data))


@pytest.mark.parametrize(
    "make, code, message",
    [
        (lambda p: _file(p, "e.csv", ""), 3, "is empty"),
        (lambda p: _file(p, "h.csv", "id,text\n"), 3, "holds no data rows"),
        (lambda p: _file(p, "c.csv", "id,body\n1,x\n"), 3, "column(s) 'text' not found; the columns are: id, body"),
        (lambda p: _file(p, "j.jsonl", '{"body": "x"}\n'), 3, "column(s) 'text' not found; the columns are: body"),
        (lambda p: _file(p, "x.parquet", b"PAR1 garbage"), 3, "not a readable Parquet file"),
        (_truncated_parquet, 3, "corrupt or truncated"),
        (_corrupt_pages_parquet, 3, "corrupt or unreadable Parquet"),
        (lambda p: p / "missing.csv", 3, "does not exist"),
    ],
    ids=[
        "empty file",
        "header only",
        "missing text column (CSV)",
        "missing text column (JSONL)",
        "corrupt parquet",
        "truncated parquet",
        "corrupt parquet pages",
        "missing input",
    ],
)
def test_file_level_cases(tmp_path, tiny_gpt2_shared, make, code, message):
    source = make(tmp_path)
    result, out = embed(tmp_path, tiny_gpt2_shared, source)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert not out.exists() and not (tmp_path / "out.parquet.partial").exists()


def test_output_in_a_missing_directory(tmp_path, tiny_gpt2_shared):
    (tmp_path / "in.txt").write_text("one\ntwo\n")
    result = CliRunner().invoke(
        cli,
        ["embed", str(tmp_path / "in.txt"), "-o", str(tmp_path / "no" / "out.parquet"), "-m", tiny_gpt2_shared, "-q"],
    )
    assert result.exit_code == 5 and "output directory" in result.output and "does not exist" in result.output


def test_output_in_a_read_only_directory(tmp_path, tiny_gpt2_shared, monkeypatch):
    (tmp_path / "in.txt").write_text("one\ntwo\n")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root ignores permission bits, so make the check see what a user would
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, m, **k: False if str(p) == str(locked) else real_access(p, m, **k))
    result = CliRunner().invoke(
        cli, ["embed", str(tmp_path / "in.txt"), "-o", str(locked / "out.parquet"), "-m", tiny_gpt2_shared, "-q"]
    )
    locked.chmod(0o755)
    assert result.exit_code == 5 and "not writable" in result.output


# ---------------------------------------------------------------------------------------------- input edge cases


def test_keep_text_with_a_plain_text_file_passes_each_line_through(tmp_path, tiny_gpt2_shared):
    path = _file(tmp_path, "lines.txt", "first line\n\nthird\n")
    result, out = embed(tmp_path, tiny_gpt2_shared, path, "--keep", "text")
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column("text").to_pylist() == ["first line", "", "third"]
    assert table.column("status").to_pylist() == ["ok", "empty", "ok"]


@pytest.mark.parametrize(
    "name, content, column",
    [
        ("bom.txt", b"\xef\xbb\xbffirst\nsecond\n", "text"),
        ("bom.csv", b"\xef\xbb\xbftext,n\nfirst,1\nsecond,2\n", "text"),
        ("bom.jsonl", b'\xef\xbb\xbf{"text": "first"}\n{"text": "second"}\n', "text"),
    ],
)
def test_a_utf8_byte_order_mark_is_not_part_of_the_first_text(tmp_path, tiny_gpt2_shared, name, content, column):
    path = _file(tmp_path, name, content)
    result, out = embed(tmp_path, tiny_gpt2_shared, path, "--keep", column)
    assert result.exit_code == 0, result.output
    assert pq.read_table(out).column(column).to_pylist() == ["first", "second"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_non_regular_inputs_are_named_not_reported_missing(tmp_path, tiny_gpt2_shared):
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    for source, what in [(fifo, "is a FIFO (named pipe)"), ("/dev/null", "is a character device")]:
        result, out = embed(tmp_path, tiny_gpt2_shared, source, "--format", "txt")
        assert result.exit_code == 3 and what in result.output and "does not exist" not in result.output
        assert not out.exists()
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "dir" / "pipe.jsonl")  # in a directory too: refused by name, never silently skipped
    result, _ = embed(tmp_path, tiny_gpt2_shared, tmp_path / "dir")
    assert result.exit_code == 3 and "is a FIFO" in result.output
    (tmp_path / "link.txt").symlink_to(tmp_path / "gone.txt")
    result, _ = embed(tmp_path, tiny_gpt2_shared, tmp_path / "link.txt")
    assert result.exit_code == 3 and "symbolic link to a missing file" in result.output


def test_an_output_name_that_is_not_utf8_gets_a_clean_message(tmp_path, tiny_gpt2_shared):
    path = _file(tmp_path, "in.txt", "a line\n")
    out = os.fsdecode(os.fsencode(tmp_path) + b"/\xff.parquet")  # what click hands over for such a name
    result = CliRunner().invoke(cli, ["embed", str(path), "-o", out, "-m", tiny_gpt2_shared, "-q"])
    assert result.exit_code == 5 and "not a valid UTF-8 name" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]  # no lock, partial or temp file left


def test_a_parquet_input_whose_name_is_not_utf8_is_read(tmp_path, tiny_gpt2_shared):
    path = os.fsdecode(os.fsencode(tmp_path) + b"/\xfe.parquet")
    pq.write_table(pa.table({"text": ["one", "two"]}), (tmp_path / "x.parquet"))
    os.rename(tmp_path / "x.parquet", path)
    result, out = embed(tmp_path, tiny_gpt2_shared, path)
    assert result.exit_code == 0, result.output
    assert pq.read_table(out).column("status").to_pylist() == ["ok", "ok"]


def test_invalid_utf8_in_every_format_and_in_passthrough_columns(tmp_path, tiny_gpt2_shared):
    cases = {
        "csv": (b"id,text,extra\n\xff1,bad \xff text,x\xfey\n2,fine,ok\n", ["--id-column", "id"]),
        "jsonl": (
            b'{"id": "\xff1", "text": "bad \xff text", "extra": "x\xfey"}\n'
            b'{"id": "2", "text": "fine", "extra": "ok"}\n',
            ["--id-column", "id"],
        ),
        "txt": (b"bad \xff text\nfine\n", []),
    }
    raw = pa.array([b"bad \xff text", b"fine"], pa.binary())
    pq.write_table(
        pa.table({"text": raw.view(pa.string()), "extra": pa.array([b"x\xfey", b"ok"]).view(pa.string())}),
        tmp_path / "in.parquet",
    )  # a writer that does not validate UTF-8
    cases["parquet"] = ((tmp_path / "in.parquet").read_bytes(), [])
    for fmt, (content, extra) in cases.items():
        path = _file(tmp_path, f"in.{fmt}", content)
        keep = ["--keep", "extra"] if fmt != "txt" else ["--keep", "text"]
        result, out = embed(tmp_path, tiny_gpt2_shared, path, *extra, *keep)
        assert result.exit_code == 0, (fmt, result.output)
        rows = pq.read_table(out).to_pylist()  # decodes every string column: the output is valid UTF-8
        assert [r["status"] for r in rows] == ["repaired", "ok"], fmt
        assert all(r["embedding"] is not None for r in rows)
        if fmt in ("csv", "jsonl"):
            assert [r["id"] for r in rows] == ["\ufffd1", "2"] and rows[0]["extra"] == "x\ufffdy"
        if fmt == "parquet":
            assert rows[0]["extra"] == "x\ufffdy"
