"""Property-based fuzzing of `embedkit embed` through the CLI: random bytes and random CSV/TSV/JSONL/Parquet shapes.

Whatever the input: never a traceback, never exit 1; the exit code is 0 or 3 (input error, documented); and where
the input parses, rows out == rows in: every input row once, in order, bad ones kept with a status. The tiny model
is loaded once for the whole module (the CLI's Extractor is swapped for a cache), so ~200 runs take seconds.
"""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
from pathlib import Path
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedkit.cli import cli
from embedkit.extract.texts import EMBEDDED_STATUSES, STATUSES

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Characters that have broken text pipelines: lone surrogates, RTL overrides, zero-width, NUL, BOM, line separators.
NASTY = "\ud800\udfff\udcff\u202e\u200f\u200b\ufeff\x00\x07\x1b\u2028\u0085\r\t \n\"',\\{}[]"
TEXTS = st.text(alphabet=st.one_of(st.characters(codec="utf-8"), st.sampled_from(NASTY)), max_size=40)
VALUES = st.one_of(
    TEXTS,
    TEXTS,
    st.none(),
    st.just(float("nan")),
    st.integers(),
    st.floats(allow_nan=True),
    st.booleans(),
    st.lists(TEXTS, max_size=3),
    st.dictionaries(st.text(max_size=5), TEXTS, max_size=2),
)


@pytest.fixture(scope="module")
def embed(tiny_gpt2_shared):
    """Run `embed` on a file of bytes; returns (exit code, output, table or None). One model load per module."""
    from embedkit import extract

    real, cache = extract.Extractor, {}

    def cached(config, **kwargs):
        key = repr(config)
        if key not in cache:
            cache[key] = real(config, **kwargs)
        return cache[key]

    def run(name: str, content: bytes, *extra: str):
        with tempfile.TemporaryDirectory() as tmp:
            source, out = Path(tmp) / name, Path(tmp) / "out.parquet"
            source.write_bytes(content)
            result = CliRunner().invoke(
                cli, ["embed", str(source), "-o", str(out), "-m", tiny_gpt2_shared, "-q", "--part-rows", "7", *extra]
            )
            assert "Traceback" not in result.output and "internal error" not in result.output, result.output
            assert result.exit_code in (0, 3), (result.exit_code, result.output)
            return result.exit_code, result.output, pq.read_table(out) if out.exists() else None

    with mock.patch.object(extract, "Extractor", cached):
        yield run


def check_rows(table: pa.Table, n: int) -> None:
    """Every input row once, in order, and a status that agrees with the embedding and the error."""
    assert table.num_rows == n
    assert table.column("id").to_pylist() == list(range(n))
    for row in table.select(["status", "error", "embedding"]).to_pylist():
        assert row["status"] in STATUSES
        assert (row["embedding"] is not None) == (row["status"] in EMBEDDED_STATUSES)
        assert (row["error"] is None) == (row["status"] == "ok")


@SETTINGS
@given(content=st.binary(max_size=400), fmt=st.sampled_from(["txt", "csv", "tsv", "jsonl"]))
def test_random_bytes_in_any_format(embed, content, fmt):
    code, output, table = embed(f"in.{fmt}", content)
    if not content:
        assert code == 3 and "is empty" in output
    if fmt == "txt" and content:
        # One row per line, empty lines included; only a final newline ends no row.
        lines = content.split(b"\n")[:-1] if content.endswith(b"\n") else content.split(b"\n")
        assert code == 0, output
        check_rows(table, len(lines))
    elif code == 0:
        check_rows(table, table.num_rows)


@SETTINGS
@given(
    records=st.lists(st.dictionaries(st.sampled_from(["text", "other", "n"]), VALUES, max_size=3), max_size=12),
    garbage=st.lists(st.tuples(st.integers(0, 12), st.text(min_size=1, max_size=20)), max_size=3),
    ascii_only=st.booleans(),
)
def test_jsonl_shapes(embed, records, garbage, ascii_only):
    lines = [
        json.dumps({"text": "first", **r} if i == 0 else r, ensure_ascii=ascii_only) for i, r in enumerate(records)
    ]
    for at, junk in garbage:
        junk = junk.replace("\n", " ")
        if junk.strip() and not (at == 0 and junk.lstrip().startswith(("[", "{"))):
            lines.insert(min(at, len(lines)) if lines else 0, junk)
    content = "\n".join(lines).encode("utf-8", "surrogatepass")
    code, output, table = embed("in.jsonl", content)
    objects = [ln for ln in lines if _is_object(ln)]
    rows = [ln for ln in lines if ln.strip()]
    if not objects or "text" not in json.loads(objects[0]):
        assert code == 3 and any(m in output for m in ("not found", "no JSON object", "is empty")), output
        return
    assert code == 0, output
    check_rows(table, len(rows))


def _is_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


@SETTINGS
@given(
    rows=st.lists(st.tuples(VALUES, VALUES), max_size=12),
    delimiter=st.sampled_from([",", "\t"]),
    header=st.sampled_from([["text", "other"], ["other", "text"], ["other", "x"]]),
)
def test_csv_shapes(embed, rows, delimiter, header):
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter)
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    fmt = "csv" if delimiter == "," else "tsv"
    code, output, table = embed(f"in.{fmt}", buffer.getvalue().encode("utf-8", "surrogatepass"))
    if "text" not in header:
        assert code == 3 and "'text' not found" in output
    elif not rows:
        assert code == 3 and "no data rows" in output
    else:
        assert code == 0, output
        check_rows(table, len(rows))


PARQUET_COLUMNS = st.sampled_from(
    [
        ("string", pa.string(), TEXTS.map(lambda t: t.encode("utf-8", "replace").decode("utf-8"))),
        ("nullable string", pa.large_string(), st.one_of(st.none(), st.text(max_size=20))),
        ("int", pa.int64(), st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))),
        ("float", pa.float64(), st.one_of(st.none(), st.floats(allow_nan=True))),
        ("list", pa.list_(pa.string()), st.one_of(st.none(), st.lists(st.text(max_size=5), max_size=3))),
        (
            "struct",
            pa.struct([("a", pa.string())]),
            st.one_of(st.none(), st.builds(lambda a: {"a": a}, st.text(max_size=5))),
        ),
        ("binary", pa.binary(), st.one_of(st.none(), st.binary(max_size=20))),
    ]
)


@SETTINGS
@given(column=PARQUET_COLUMNS, data=st.data(), n=st.integers(0, 12), name=st.sampled_from(["text", "body"]))
def test_parquet_shapes(embed, column, data, n, name):
    _, arrow_type, values = column
    cells = data.draw(st.lists(values, min_size=n, max_size=n))
    buffer = io.BytesIO()
    pq.write_table(pa.table({name: pa.array(cells, type=arrow_type), "other": pa.array(range(n))}), buffer)
    code, output, table = embed("in.parquet", buffer.getvalue())
    if name != "text":
        assert code == 3 and "'text' not found" in output
    elif n == 0:
        assert code == 3 and "no data rows" in output
    else:
        assert code == 0, output
        check_rows(table, n)
        for cell, status in zip(cells, table.column("status").to_pylist()):
            if cell is None or (isinstance(cell, float) and math.isnan(cell)):
                assert status == "null"
