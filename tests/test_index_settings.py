"""Settings travel to the index (issue #23): stored text, recorded input columns, quiet and aligned output."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from test_index import clustered, write_vectors

from embedkit.cli import cli
from embedkit.errors import InputError
from embedkit.index import Index, build_index
from embedkit.store import META_KEY, vectors_to_arrow


def with_input_columns(path: Path, out: Path, text: str, id_: str | None, rename: dict[str, str]) -> Path:
    """A copy of a features file whose input text/id columns are recorded as ``embed`` records them."""
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[META_KEY])
    meta["columns"] = {"text": text, "id": id_, "keep": [text]}
    table = table.rename_columns([rename.get(c, c) for c in table.column_names])
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()}), out)
    return out


def test_the_recorded_text_column_is_stored_by_default_and_recorded(tmp_path):
    x = clustered(50)
    base = write_vectors(tmp_path / "f.parquet", x)
    body = with_input_columns(base, tmp_path / "body.parquet", "body", "ticket", {"text": "body"})
    report = build_index(body, tmp_path / "ix", kind="flat")
    assert report.stored_columns == ["body"] and not report.notes
    index = Index.load(tmp_path / "ix")
    assert index.text_column == "body" and index.meta["input_columns"] == {"text": "body", "id": "ticket"}
    assert index.search_ids([3], k=2).hits(0)[0]["body"].startswith("row ")
    # --no-store-text drops it; --store adds columns beside it (not instead of it)
    assert build_index(body, tmp_path / "a", kind="flat", store_text=False).stored_columns == []
    assert Index.load(tmp_path / "a").text_column is None
    table = pq.read_table(body)
    extra = table.append_column("section", pa.array(["s"] * 50)).replace_schema_metadata(table.schema.metadata)
    pq.write_table(extra, tmp_path / "extra.parquet")
    both = build_index(tmp_path / "extra.parquet", tmp_path / "b", kind="flat", store=["section"])
    assert both.stored_columns == ["body", "section"]


def test_an_index_built_before_columns_were_recorded_still_loads(tmp_path):
    build_index(write_vectors(tmp_path / "f.parquet", clustered(30)), tmp_path / "ix", kind="flat")
    path = tmp_path / "ix" / "index.json"
    meta = json.loads(path.read_text())
    assert meta["text_column"] == "text" and meta["input_columns"] == {"text": None, "id": None}
    del meta["text_column"], meta["input_columns"]
    path.write_text(json.dumps(meta))
    assert Index.load(tmp_path / "ix").text_column is None
    meta["text_column"] = "nope"
    path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="'text_column'"):
        Index.load(tmp_path / "ix")


def test_search_queries_reads_the_recorded_text_and_id_columns(features_file, write_csv, tmp_path):
    # embed recorded the input's columns (text in `body`, ids in `doc_id`); the queries file uses the same names
    body = with_input_columns(features_file(n=30), tmp_path / "body.parquet", "body", "doc_id", {"text": "body"})
    build_index(body, tmp_path / "ix", kind="flat")
    index = Index.load(tmp_path / "ix", device="cpu")
    texts = pq.read_table(body).column("body").to_pylist()
    queries = write_csv([{"doc_id": "q1", "body": texts[2]}, {"doc_id": "q2", "body": texts[7]}], "q.csv")
    counts = index.search_file(queries, tmp_path / "hits.parquet", k=2)
    hits = pq.read_table(tmp_path / "hits.parquet")
    assert counts["searched"] == 2 and hits.column("query_id").to_pylist()[::2] == ["q1", "q2"]
    assert hits.column("query_text").to_pylist()[0] == texts[2] and "body" in hits.column_names
    # without the recorded id column the queries are still searched, without query_id
    no_ids = write_csv([{"body": texts[2]}], "no-ids.csv")
    index.search_file(no_ids, tmp_path / "h2.parquet", k=1)
    assert "query_id" not in pq.read_table(tmp_path / "h2.parquet").column_names
    # the recorded text column is missing: the message says where the name came from and how to give another
    other = write_csv([{"question": texts[2]}], "other.csv")
    with pytest.raises(InputError, match="built from text in column 'body'.*--text-column"):
        index.search_file(other, tmp_path / "h3.parquet", k=1)
    index.search_file(other, tmp_path / "h3.parquet", k=1, text_column="question")  # given: used
    result = CliRunner().invoke(
        cli, ["search", str(tmp_path / "ix"), "--queries", str(queries), "-o", str(tmp_path / "h4.parquet"), "-q"]
    )
    assert result.exit_code == 0, result.output
    assert pq.read_table(tmp_path / "h4.parquet").column("query_id").to_pylist()[0] == "q1"


def test_cli_store_flags(tmp_path):
    features = write_vectors(tmp_path / "f.parquet", clustered(40))
    runner = CliRunner()
    result = runner.invoke(cli, ["index", "build", str(features), "-o", str(tmp_path / "a"), "--no-store-text", "-q"])
    assert result.exit_code == 0, result.output
    assert Index.load(tmp_path / "a").stored_columns == []
    result = runner.invoke(
        cli, ["index", "build", str(features), "-o", str(tmp_path / "b"), "--no-store", "--store", "x"]
    )
    assert result.exit_code == 2 and "--no-store" in result.output
    result = runner.invoke(cli, ["index", "build", str(features), "-o", str(tmp_path / "c"), "-q"])
    assert result.exit_code == 0 and "stored for display beside the ids: text" in result.output
    assert "peak memory" not in result.output  # a 3 KB index: the process's peak would read as the index's


def test_several_embedding_columns_are_listed_with_the_flag(tmp_path):
    x = clustered(20)
    base = pq.read_table(write_vectors(tmp_path / "f.parquet", x))
    valid = np.ones(20, bool)
    two = base.append_column("embedding_l3", vectors_to_arrow(x, valid, "float32"))
    pq.write_table(two.replace_schema_metadata(base.schema.metadata), tmp_path / "two.parquet")
    with pytest.raises(InputError, match=r"embedding, embedding_l3; pick one with --column NAME \(column=NAME"):
        build_index(tmp_path / "two.parquet", tmp_path / "ix", kind="flat")
    result = CliRunner().invoke(cli, ["index", "build", str(tmp_path / "two.parquet"), "-o", str(tmp_path / "ix")])
    assert result.exit_code == 3 and "--column" in result.output


def test_search_table_columns_line_up(tmp_path):
    x = clustered(30)
    ids = [f"doc-{i}" * (1 + i % 3) for i in range(30)]
    base = pq.read_table(write_vectors(tmp_path / "f.parquet", x, ids=ids))
    sections = pa.array([["games", "a", "long section name"][i % 3] for i in range(30)])
    table = base.append_column("section", sections).replace_schema_metadata(base.schema.metadata)
    pq.write_table(table, tmp_path / "s.parquet")
    build_index(tmp_path / "s.parquet", tmp_path / "ix", kind="flat", metric="l2", store=["section"])
    result = CliRunner().invoke(cli, ["search", str(tmp_path / "ix"), "--id", "doc-4doc-4", "-k", "6"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if not line.startswith("note")]
    header, rows = lines[0], lines[1:]
    assert len(rows) == 6
    end = header.index("distance") + len("distance")  # scores are right-aligned under their header
    assert all(row[end - 1] != " " and row[end] == " " for row in rows), result.output
    for name in ("id", "text", "section"):
        start = re.search(rf"\b{name}\b", header).start()  # every row's cell starts under its header
        assert all(row[start - 1] == " " and row[start] != " " for row in rows), (name, result.output)
