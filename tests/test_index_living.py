"""A living index (issue #22): unique ids, delete, upsert and compact under the lock, search skipping deleted rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from test_index import clustered, write_vectors

from embedkit.cli import cli
from embedkit.errors import InputError
from embedkit.index import Index, add_to_index, build_index, compact_index, delete_from_index


def _ids(result, index: Index) -> list:
    return [h["id"] for h in result.hits(0)]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_deleted_rows_are_never_returned_and_compaction_keeps_the_rest(tmp_path, kind):
    x = clustered(2000)
    build_index(write_vectors(tmp_path / "f.parquet", x), tmp_path / "ix", kind=kind, metric="l2", eval_queries=100)
    gone = list(range(0, 2000, 10))  # 10%: below the compaction threshold, so they stay as deleted rows
    report = delete_from_index(tmp_path / "ix", gone)
    assert report.deleted == 200 and report.rows == 1800 and report.pending == 200 and not report.compacted
    index = Index.load(tmp_path / "ix")
    meta = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert meta["format"] == 3 and meta["deleted"] == 200 and meta["rows"] == 2000 and len(index) == 1800
    assert (report.recall is None) == (kind == "ivfpq")
    found = np.asarray(index.ids.column("id"))[index.search(x[gone[:50]], k=10).positions]
    assert not set(found.ravel()) & set(gone)  # the deleted rows themselves were the nearest: skipped
    assert (index.search(x[gone[:50]], k=10).positions >= 0).all()  # and k live rows came back instead
    if kind != "ivfpq":
        exact = index.search(x[gone[:50]], k=10, exact=True)
        assert not set(np.asarray(index.ids.column("id"))[exact.positions].ravel()) & set(gone)
    with pytest.raises(InputError, match="no row with id"):
        index.search_ids([gone[3]])
    before = {h["id"]: h["score"] for h in index.search_ids([5], k=5).hits(0)}
    assert compact_index(tmp_path / "ix").compacted == 200
    compacted = Index.load(tmp_path / "ix")
    meta = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert meta["format"] == 2 and meta["rows"] == 1800 and compacted.faiss_index.ntotal == 1800
    assert sorted(compacted.ids.column("id").to_pylist()) == sorted(set(range(2000)) - set(gone))
    after = {h["id"]: h["score"] for h in compacted.search_ids([5], k=5).hits(0)}
    if kind in ("flat", "ivf", "ivfpq"):  # the same vectors under the same ids: the same answers
        assert after.keys() == before.keys()
        np.testing.assert_allclose([after[i] for i in before], list(before.values()), rtol=1e-4)
    # FAISS row = id-map row still holds: every row finds itself
    rows = [17, 901, 1999]
    own = compacted.search(x[rows], k=1, **({"nprobe": compacted.faiss_index.nlist} if kind == "ivf" else {}))
    if kind != "ivfpq":
        assert [h[0]["id"] for h in (own.hits(q) for q in range(3))] == rows


def test_deletions_past_the_threshold_compact_and_unknown_ids_are_reported(tmp_path):
    x = clustered(300)
    build_index(write_vectors(tmp_path / "f.parquet", x), tmp_path / "ix", kind="hnsw")
    report = delete_from_index(tmp_path / "ix", [*range(100), "nope", 5000])
    assert report.deleted == 100 and report.unknown == 2 and report.compacted == 100 and report.pending == 0
    lines = "\n".join(report.summary_lines())
    assert "2 id(s) not in the index" in lines and "passed 20%" in lines
    assert Index.load(tmp_path / "ix").faiss_index.ntotal == 200
    generation = json.loads((tmp_path / "ix" / "index.json").read_text())["generation"]
    with pytest.raises(InputError, match="1 id\\(s\\) not in the index: 7"):
        delete_from_index(tmp_path / "ix", [150, 7], strict=True)
    assert delete_from_index(tmp_path / "ix", ["nope"]).deleted == 0  # nothing to do: nothing written
    assert json.loads((tmp_path / "ix" / "index.json").read_text())["generation"] == generation
    assert len(Index.load(tmp_path / "ix")) == 200  # --strict deleted nothing either


def test_add_refuses_an_existing_id_and_upsert_replaces_it(tmp_path):
    x = clustered(400)
    build_index(write_vectors(tmp_path / "a.parquet", x[:300]), tmp_path / "ix", kind="flat")
    moved = x[:3] + 5.0  # rows 0-2 get new vectors; 300-309 are new
    batch = write_vectors(
        tmp_path / "b.parquet", np.vstack([moved, x[300:310]]), ids=np.r_[np.arange(3), np.arange(300, 310)]
    )
    with pytest.raises(InputError, match="3 id\\(s\\) already in the index \\(0, 1, 2\\).*index upsert"):
        add_to_index(tmp_path / "ix", batch)
    index, report = add_to_index(tmp_path / "ix", batch, upsert=True)
    assert report.replaced == 3 and report.added == 13 and report.rows == 310
    assert "replaced 3 rows and added 10 new ones" in report.summary_lines()[0]
    index = Index.load(tmp_path / "ix")
    hit = index.search(moved[1], k=1).hits(0)[0]
    assert hit["id"] == 1 and hit["score"] == pytest.approx(1.0, abs=1e-5)  # the new vector, under the old id
    assert index.ids.column("id").to_pylist().count(1) == 2 and len(index) == 310  # old row deleted, not yet gone
    # a second upsert of the same ids replaces them again
    _, again = add_to_index(tmp_path / "ix", batch, upsert=True)
    assert again.replaced == 13 and again.rows == 310
    assert index.add(batch, upsert=True) == 13 and len(index) == 310  # the object takes the deletions along too


def test_cli_delete_upsert_compact(tmp_path):
    x = clustered(100)
    build_index(write_vectors(tmp_path / "f.parquet", x, ids=[f"d{i}" for i in range(100)]), tmp_path / "ix")
    (tmp_path / "gone.txt").write_text("d1\nd2\n\nd3\n")
    runner = CliRunner()
    result = runner.invoke(cli, ["index", "delete", str(tmp_path / "ix"), "--ids", str(tmp_path / "gone.txt"), "d4"])
    assert result.exit_code == 0 and "deleted 4 rows" in result.output, result.output
    result = runner.invoke(cli, ["index", "delete", str(tmp_path / "ix"), "d5", "zz", "--strict"])
    assert result.exit_code == 3 and "zz" in result.output
    result = runner.invoke(cli, ["index", "delete", str(tmp_path / "ix"), "zz"])
    assert result.exit_code == 0 and "not in the index, ignored: zz" in result.output
    again = write_vectors(tmp_path / "g.parquet", x[:2], ids=["d0", "d1"])
    result = runner.invoke(cli, ["index", "add", str(tmp_path / "ix"), str(again), "-q"])
    assert result.exit_code == 3 and "already in the index (d0)" in result.output  # d1 was deleted: free again
    result = runner.invoke(cli, ["index", "upsert", str(tmp_path / "ix"), str(again), "-q"])
    assert result.exit_code == 0 and "replaced 1 rows and added 1 new" in result.output, result.output
    result = runner.invoke(cli, ["index", "compact", str(tmp_path / "ix")])
    assert result.exit_code == 0 and "5 deleted rows dropped" in result.output, result.output
    assert Index.load(tmp_path / "ix").faiss_index.ntotal == 97
