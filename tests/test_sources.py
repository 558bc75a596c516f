"""Readers: every format, directories and globs, bounded batches, and no row ever lost."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedkit import ConfigError, InputError
from embedkit.sources import Source

ROWS = [{"rid": f"r{i}", "body": f"text number {i}", "stars": i % 5} for i in range(10)]


def _write(tmp_path, fmt: str, rows=ROWS):
    path = tmp_path / f"data.{fmt}"
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        lines = [sep.join(rows[0])] + [sep.join(str(v) for v in r.values()) for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt == "txt":
        path.write_text("".join(r["body"] + "\n" for r in rows), encoding="utf-8")
    return path


def _read_all(source: Source, rows: int = 3):
    out = {"texts": [], "ids": [], "rows": [], "errors": [], "keep": []}
    for records in source.batches(rows):
        assert len(records) <= rows
        out["texts"] += records.texts
        ids = records.ids
        out["ids"] += ids.to_pylist() if isinstance(ids, pa.Array) else (ids or [])
        out["rows"] += records.row_numbers
        out["errors"] += records.parse_errors
        for values in records.keep.values():
            out["keep"] += values.to_pylist() if isinstance(values, pa.Array) else values
    return out


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_tabular_formats(tmp_path, fmt):
    got = _read_all(Source(_write(tmp_path, fmt), text_column="body", id_column="rid", keep=["stars"]))
    assert got["texts"] == [r["body"] for r in ROWS]
    assert got["ids"] == [r["rid"] for r in ROWS]
    assert got["rows"] == list(range(10))
    expected_stars = [str(r["stars"]) for r in ROWS] if fmt in ("csv", "tsv") else [r["stars"] for r in ROWS]
    assert got["keep"] == expected_stars  # CSV has no types: passed through as the text it holds


def test_plain_text_one_text_per_line_keeps_empty_lines(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_bytes(b"first\n\nthird \xff\r\n")
    got = _read_all(Source(path))
    assert got["texts"] == ["first", "", "third \udcff"]
    assert got["rows"] == [0, 1, 2]


def test_directory_and_glob_read_every_file_in_order(tmp_path):
    for name in ("b.jsonl", "a.jsonl"):
        (tmp_path / name).write_text(json.dumps({"text": name}) + "\n" + json.dumps({"text": name + "2"}) + "\n")
    (tmp_path / ".hidden.jsonl").write_text("{}\n")
    expected = ["a.jsonl", "a.jsonl2", "b.jsonl", "b.jsonl2"]
    assert _read_all(Source(tmp_path))["texts"] == expected
    assert _read_all(Source(str(tmp_path / "*.jsonl")))["texts"] == expected
    assert _read_all(Source(tmp_path), rows=3)["rows"] == [0, 1, 2, 3]


def test_skip_resumes_at_a_row_across_files(tmp_path):
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text("1\n2\n3\n")
    got = _read_all(Source(tmp_path).__class__(tmp_path), rows=2)
    assert got["rows"] == list(range(6))
    skipped = [r for batch in Source(tmp_path).batches(2, skip=4) for r in batch.row_numbers]
    assert skipped == [4, 5]


def test_malformed_jsonl_lines_become_rows_with_a_parse_error(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "good"}\n{"text": broken\n[1, 2]\n\n{"text": "bad \xff utf8"}\n')
    got = _read_all(Source(path))
    assert got["texts"] == ["good", None, None, "bad \udcff utf8"]
    assert got["errors"][0] is None and "line 2: malformed JSON" in got["errors"][1]
    assert "line 3: a JSON list, not an object" in got["errors"][2]


def test_csv_row_with_wrong_field_count_is_kept_with_an_error(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"quoted, with comma",a\nshort\n"multi\nline",b\n', encoding="utf-8")
    got = _read_all(Source(path, keep=["label"]))
    assert got["texts"] == ["quoted, with comma", "short", "multi\nline"]
    assert got["errors"][1] == "line 3: 1 fields where the header has 2"
    assert got["keep"] == ["a", None, "b"]


def test_huge_csv_cell_is_read(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("text\n" + "x" * 1_000_000 + "\n")
    assert len(_read_all(Source(path))["texts"][0]) == 1_000_000


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_missing_column_lists_the_columns(tmp_path, fmt):
    with pytest.raises(InputError, match=r"column\(s\) 'text' not found; the columns are: rid, body, stars"):
        Source(_write(tmp_path, fmt))


@pytest.mark.parametrize(
    "content, message",
    [(b"", "is empty"), (b"not parquet at all", "not a readable Parquet file")],
)
def test_empty_and_corrupt_files(tmp_path, content, message):
    path = tmp_path / "x.parquet"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        Source(path)


def test_truncated_parquet_is_refused(tmp_path):
    path = _write(tmp_path, "parquet")
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(InputError, match="corrupt or truncated"):
        Source(path, text_column="body")


def test_input_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        Source(tmp_path / "missing.csv")
    with pytest.raises(InputError, match="no file matches"):
        Source(str(tmp_path / "*.csv"))
    (tmp_path / "x.xlsx").write_text("x")
    with pytest.raises(InputError, match="cannot tell the format"):
        Source(tmp_path / "x.xlsx")
    (tmp_path / "arr.json").write_text('[{"text": "a"}]')
    with pytest.raises(InputError, match="JSON array"):
        Source(tmp_path / "arr.json")
    with pytest.raises(InputError, match="plain text"):
        Source(_write(tmp_path, "txt"), keep=["stars"])
    with pytest.raises(ConfigError, match="clash"):
        Source(_write(tmp_path, "csv"), text_column="body", keep=["status"])


def test_parquet_batches_read_every_row_in_order_one_row_group_at_a_time(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedkit.sources import parquet_batches

    path = tmp_path / "groups.parquet"
    pq.write_table(pa.table({"a": list(range(30)), "b": [str(i) for i in range(30)]}), path, row_group_size=7)
    batches = list(parquet_batches(pq.ParquetFile(path), 5, ["a"]))
    assert [b.num_rows for b in batches] == [5, 2, 5, 2, 5, 2, 5, 2, 2]  # never across a row-group boundary
    assert [v for b in batches for v in b.column("a").to_pylist()] == list(range(30))
    assert all(b.schema.names == ["a"] for b in batches)
