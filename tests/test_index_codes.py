"""SQ8 codes (issue #22 follow-up): an index over int8 features holds 1 byte a dimension in FAISS, not 4."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
from click.testing import CliRunner
from test_index import clustered
from test_index_rescore import DIM, pair, recall, truth, write_features

from embedkit.cli import cli
from embedkit.config import ExtractConfig
from embedkit.errors import ConfigError
from embedkit.index import Index, add_to_index, build_index, compact_index, delete_from_index, plan_index


def _meta(directory) -> dict:
    return json.loads((directory / "index.json").read_text())


def _storage(index: Index) -> str:
    inner = faiss.downcast_index(index.faiss_index)
    if isinstance(inner, faiss.IndexHNSW):
        inner = faiss.downcast_index(inner.storage)
    return type(inner).__name__


def test_plan_uses_faiss_sq8_factory_strings():
    assert plan_index("flat", 5000, 64, codes="sq8").factory == "SQ8"
    assert plan_index("hnsw", 5000, 64, codes="sq8").factory == "HNSW32,SQ8"
    ivf = plan_index("ivf", 20_000, 64, codes="sq8")
    assert ivf.factory == f"IVF{ivf.nlist},SQ8" and ivf.codes == "sq8"
    assert plan_index("ivfpq", 50_000, 64, codes="sq8").codes == "pq"  # PQ keeps its own codes
    # A quarter of the vector bytes: auto fits HNSW where float32 vectors would not.
    budget = plan_index("hnsw", 100_000, 256, codes="sq8").estimated_bytes
    assert plan_index("auto", 100_000, 256, memory=budget, codes="sq8").kind == "hnsw"
    assert plan_index("auto", 100_000, 256, memory=budget).kind != "hnsw"
    with pytest.raises(ConfigError, match="codes"):
        plan_index("flat", 10, 4, codes="int4")


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_int8_features_make_a_smaller_sq8_index_with_honest_recall(tmp_path, kind):
    x = clustered(3000, dim=DIM)
    int8, floats = pair(tmp_path, x, "int8")
    sq = build_index(int8, tmp_path / "sq", kind=kind, eval_queries=200)
    full = build_index(int8, tmp_path / "full", kind=kind, eval_queries=200, codes="float32")
    assert sq.codes == "sq8" and full.codes == "float32"
    assert _storage(Index.load(tmp_path / "sq")).endswith("ScalarQuantizer")
    # 3 bytes a dimension saved per row (HNSW's graph links and IVF's ids stay as they were).
    saved = (tmp_path / "full" / "index.faiss").stat().st_size - (tmp_path / "sq" / "index.faiss").stat().st_size
    assert saved >= 0.95 * 3000 * DIM * 3
    assert full.bytes_per_vector - sq.bytes_per_vector >= 0.95 * DIM * 3
    meta = _meta(tmp_path / "sq")
    assert meta["codes"]["type"] == "sq8" and meta["codes"]["bytes_per_vector"] == sq.bytes_per_vector
    assert "sq8 codes" in sq.summary_lines()[2]
    # Even flat SQ8 is measured (it is not exact), on held-out queries, and the figure is a real one.
    assert sq.recall_at_10 is not None and sq.eval_queries > 0 and 0.8 <= sq.recall_at_10 <= 1.0
    # Search is sane: a row's own vector finds it first.
    index = Index.load(tmp_path / "sq")
    ids = index.ids.column("id").to_numpy()
    found = ids[index.search_vectors(x[:50], 10).positions]
    assert np.mean(found[:, 0] == np.arange(50)) >= 0.9
    assert recall(found, truth(x[:50], x, 10)) >= 0.8


def test_rescoring_restores_the_exact_top_k(tmp_path):
    x = clustered(600, dim=DIM)
    int8, floats = pair(tmp_path, x, "int8")
    report = build_index(int8, tmp_path / "ix", kind="flat", rescore_with=floats, eval_queries=60)
    assert report.codes == "sq8"
    index = Index.load(tmp_path / "ix")
    q = x[:40] + 0.01 * np.random.default_rng(1).standard_normal((40, DIM)).astype(np.float32)
    ids = index.ids.column("id").to_numpy()
    rescored = ids[index.search_vectors(q, 5).positions]
    assert (rescored == truth(q, x, 5)).all()
    # After a change the recall figure of a flat SQ8 index is measured (it is not exact by construction).
    extra = clustered(50, dim=DIM, seed=5)
    more, more_floats = pair(tmp_path, extra, "int8", name="more", ids=np.arange(600, 650))
    _, added = add_to_index(tmp_path / "ix", more, rescore_with=more_floats)
    assert added.recall is not None and added.recall["queries"] > 0 and added.recall["recall_at_10"] >= 0.9


def test_add_delete_upsert_compact_keep_sq8(tmp_path):
    x = clustered(2400, dim=DIM)
    first = write_features(tmp_path / "a.parquet", x[:2000], "int8", ids=np.arange(2000))
    build_index(first, tmp_path / "ix", kind="hnsw", eval_queries=100)
    before = Index.load(tmp_path / "ix")
    codes_before = before.faiss_index.reconstruct_n(0, 2000)
    # The added rows carry their own int8 scale; the quantizer keeps the range it learnt.
    add_to_index(tmp_path / "ix", write_features(tmp_path / "b.parquet", x[2000:], "int8", ids=np.arange(2000, 2400)))
    assert _storage(Index.load(tmp_path / "ix")) == "IndexScalarQuantizer"
    delete_from_index(tmp_path / "ix", list(range(0, 600)))
    compact_index(tmp_path / "ix")
    after = Index.load(tmp_path / "ix")
    assert after.size == 1800 and _storage(after) == "IndexScalarQuantizer"
    # Compaction rebuilt the graph with the same trained quantizer: each kept row has exactly its old code.
    survivors = [i for i in range(600, 2000)]
    kept = np.vstack([after.faiss_index.reconstruct(after.position_of(i)) for i in survivors])
    assert np.array_equal(kept, codes_before[[before.position_of(i) for i in survivors]])
    meta = _meta(tmp_path / "ix")
    size = (tmp_path / "ix" / "index.faiss").stat().st_size
    assert meta["codes"] == {"type": "sq8", "bytes_per_vector": round(size / 1800, 1)}
    ids = after.ids.column("id").to_numpy()
    found = ids[after.search_vectors(x[1000:1050], 1).positions[:, 0]]
    assert np.mean(found == np.arange(1000, 1050)) >= 0.9


def test_float_and_binary_features_stay_float32_and_codes_can_be_forced(tmp_path):
    x = clustered(800, dim=DIM)
    for dtype in ("float32", "binary"):
        path = write_features(tmp_path / f"{dtype}.parquet", x, dtype)
        assert build_index(path, tmp_path / f"ix-{dtype}", kind="flat").codes == "float32"
    forced = build_index(tmp_path / "float32.parquet", tmp_path / "ix-forced", kind="flat", codes="sq8")
    assert forced.codes == "sq8" and forced.recall_at_10 is not None


def test_cli_codes_option(tmp_path):
    x = clustered(500, dim=DIM)
    path = write_features(tmp_path / "int8.parquet", x, "int8")
    runner = CliRunner()
    out = runner.invoke(cli, ["index", "build", str(path), "-o", str(tmp_path / "a"), "--kind", "flat", "-q"])
    assert out.exit_code == 0, out.output
    assert "sq8 codes" in out.output and _meta(tmp_path / "a")["factory"] == "SQ8"
    args = ["index", "build", str(path), "-o", str(tmp_path / "b"), "--kind", "flat", "--codes", "float32", "-q"]
    out = runner.invoke(cli, args)
    assert out.exit_code == 0, out.output
    assert _meta(tmp_path / "b")["factory"] == "Flat"
    out = runner.invoke(cli, ["index", "build", str(path), "-o", str(tmp_path / "c"), "--codes", "int4"])
    assert out.exit_code == 2


def test_int8_embeddings_of_the_tiny_gpt2(tiny_gpt2_shared, tmp_path):
    """Embedded like `embed --vector-dtype int8`: the index is SQ8 and a text finds its own row."""
    from conftest import sample_texts

    from embedkit.embed import embed_file

    texts = sample_texts(40, seed=3)
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    for dtype in ("int8", "float32"):
        config = ExtractConfig(model=tiny_gpt2_shared, dtype=dtype)
        embed_file(tmp_path / "in.txt", tmp_path / f"{dtype}.parquet", config, device="cpu", progress=False)
    report = build_index(tmp_path / "int8.parquet", tmp_path / "ix", rescore_with=tmp_path / "float32.parquet")
    assert report.codes == "sq8" and _meta(tmp_path / "ix")["factory"] == "SQ8"
    index = Index.load(tmp_path / "ix", device="cpu")
    hits = index.search(texts[7], k=3).hits()
    assert hits[0]["id"] == 7 and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
