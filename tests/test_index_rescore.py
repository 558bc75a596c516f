"""Re-scoring (issue #22): an index of int8 / binary vectors re-ranks its candidates with the float vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from test_index import clustered

from embedkit import vectors
from embedkit.cli import cli
from embedkit.config import ExtractConfig
from embedkit.errors import ConfigError, IncompatibleError, InputError
from embedkit.index import Index, add_to_index, build_index, compact_index, delete_from_index
from embedkit.index.rescore import RESCORE_FILE
from embedkit.store import with_metadata

DIM = 64


def write_features(path: Path, x: np.ndarray, dtype: str, ids=None, model: str = "synthetic") -> Path:
    """A features file of ``x`` stored as ``dtype`` (int8 with its per-dimension scale), no model needed."""
    n, dim = x.shape
    meta: dict = {
        "format_version": 1,
        "config": ExtractConfig(model=model, layers=(2,), max_length=64, stride=8, dtype=dtype).to_dict(),
    }
    if dtype == "int8":
        scale = vectors.int8_scale(vectors.finite_max_abs(x))
        q = vectors.quantize_int8(x, scale)
        column = pa.FixedSizeListArray.from_arrays(pa.array(q.reshape(-1)), dim)
        meta[vectors.META_KEY] = {"embedding": {"dtype": "int8", "scale": [float(s) for s in scale]}}
    else:
        column = vectors.part_array(x, np.ones(n, bool), dtype)
        if dtype == "binary":
            meta[vectors.META_KEY] = {"embedding": {"dtype": "binary"}}
    ids = np.arange(n) if ids is None else ids
    table = pa.table({"id": pa.array(ids), "text": [f"row {i}" for i in ids], "embedding": column})
    pq.write_table(table.cast(with_metadata(table.schema, meta)), path)
    return path


def pair(tmp_path: Path, x: np.ndarray, dtype: str, name: str = "f", ids=None) -> tuple[Path, Path]:
    return (
        write_features(tmp_path / f"{name}-{dtype}.parquet", x, dtype, ids),
        write_features(tmp_path / f"{name}-float.parquet", x, "float32", ids),
    )


def truth(queries: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    return np.argsort(-(q @ unit.T), axis=1, kind="stable")[:, :k]


def recall(found: np.ndarray, expected: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, expected)]))


@pytest.mark.parametrize("dtype", ["binary", "int8"])
@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_rescored_search_ranks_by_the_float_vectors(tmp_path, dtype, kind):
    x = clustered(3000, dim=DIM)
    compact, floats = pair(tmp_path, x, dtype)
    report = build_index(compact, tmp_path / "ix", kind=kind, rescore_with=floats, eval_queries=200)
    assert report.rescore is not None and report.rescore["factor"] == 10
    measured = report.rescore["recall"]
    assert measured["with"] >= max(measured["without"], 0.85)
    assert any(line.startswith("re-scoring: top k x 10") for line in report.summary_lines())
    index = Index.load(tmp_path / "ix")
    stored = np.load(tmp_path / "ix" / RESCORE_FILE)
    assert stored.shape == (3000, DIM) and stored.dtype == np.float32
    meta = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert meta["rescore"]["file"] == RESCORE_FILE and RESCORE_FILE in meta["files"]

    queries = x[::60] + np.random.default_rng(7).standard_normal((50, DIM)).astype(np.float32) * 0.5
    expected = truth(queries, x, 10)
    ids = index.ids.column("id").to_numpy()
    rescored = index.search(queries, k=10)
    plain = index.search(queries, k=10, rescore=False)
    found = ids[rescored.positions]
    assert recall(found, expected) >= 0.85
    assert recall(found, expected) >= recall(ids[plain.positions], expected)
    # Scores are the float cosines of the hits, in order.
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    np.testing.assert_allclose(rescored.scores, np.einsum("qd,qkd->qk", q, unit[found]), rtol=1e-4, atol=1e-5)
    assert (np.diff(rescored.scores, axis=1) <= 1e-6).all()
    # Exact search compares the float vectors: the true top 10.
    exact = index.search(queries, k=10, exact=True)
    assert recall(ids[exact.positions], expected) == 1.0


def test_filters_deleted_rows_and_more_like_this_with_rescoring(tmp_path):
    x = clustered(2000, dim=DIM)
    compact, floats = pair(tmp_path, x, "binary")
    build_index(compact, tmp_path / "ix", kind="hnsw", rescore_with=floats, store=["text"], eval_queries=100)
    index = Index.load(tmp_path / "ix")
    result = index.search(x[:5], k=10, where="id % 3 = 0")
    assert all(h["id"] % 3 == 0 for q in range(5) for h in result.hits(q))
    assert result.hits(0)[0]["id"] == 0  # its own float vector: cosine 1
    assert index.search(x[:1], k=5, where="id < 0").positions.shape == (1, 0)  # nothing matches: empty
    similar = index.search_ids([4], k=5)
    assert 4 not in [h["id"] for h in similar.hits(0)] and len(similar.hits(0)) == 5
    delete_from_index(tmp_path / "ix", list(range(0, 2000, 2)))  # half: compacted
    index = Index.load(tmp_path / "ix")
    assert len(index) == 1000 and len(index.float_vectors) == 1000
    assert np.load(tmp_path / "ix" / RESCORE_FILE).shape == (1000, DIM)
    hits = index.search(x[1:40:2], k=1).positions[:, 0]
    assert index.ids.column("id").to_numpy()[hits].tolist() == list(range(1, 40, 2))  # rows still aligned


def test_add_and_upsert_carry_the_float_vectors(tmp_path):
    x = clustered(1500, dim=DIM)
    compact, floats = pair(tmp_path, x[:1000], "int8")
    build_index(compact, tmp_path / "ix", kind="flat", rescore_with=floats)
    more_compact, more_floats = pair(tmp_path, x[1000:], "int8", name="more", ids=np.arange(1000, 1500))
    with pytest.raises(InputError, match="--rescore-with"):
        add_to_index(tmp_path / "ix", more_compact)
    index, report = add_to_index(tmp_path / "ix", more_compact, rescore_with=more_floats)
    assert report.added == 500 and len(index.float_vectors) == 1500
    index = Index.load(tmp_path / "ix")
    assert index.ids.column("id").to_numpy()[index.search(x[1200:1210], k=1).positions[:, 0]].tolist() == list(
        range(1200, 1210)
    )
    moved = clustered(1, dim=DIM, seed=99)
    up_compact, up_floats = pair(tmp_path, moved, "int8", name="up", ids=np.array([3]))
    add_to_index(tmp_path / "ix", up_compact, upsert=True, rescore_with=up_floats)
    index = Index.load(tmp_path / "ix")
    assert index.search(moved, k=1).hits(0)[0]["id"] == 3
    compact_index(tmp_path / "ix")
    index = Index.load(tmp_path / "ix")
    assert len(index.float_vectors) == len(index) == 1500
    assert index.search(moved, k=1).hits(0)[0]["id"] == 3


def test_bad_rescore_inputs_are_clear_errors(tmp_path):
    x = clustered(300, dim=DIM)
    compact, floats = pair(tmp_path, x, "binary")
    with pytest.raises(ConfigError, match="re-scoring"):
        build_index(floats, tmp_path / "a", rescore_with=floats)
    other = write_features(tmp_path / "other.parquet", x, "float32", model="another")
    with pytest.raises(IncompatibleError, match="embedded differently"):
        build_index(compact, tmp_path / "b", rescore_with=other)
    partial = write_features(tmp_path / "partial.parquet", x[:200], "float32")
    with pytest.raises(InputError, match="100 indexed row"):
        build_index(compact, tmp_path / "c", rescore_with=partial)
    with pytest.raises(InputError, match="float32 or float16"):
        build_index(compact, tmp_path / "d", rescore_with=compact)
    with pytest.raises(ConfigError, match="factor"):
        build_index(compact, tmp_path / "e", rescore_with=floats, rescore_factor=0)
    build_index(compact, tmp_path / "plain")
    with pytest.raises(ConfigError, match="without float vectors"):
        add_to_index(tmp_path / "plain", compact, upsert=True, rescore_with=floats)
    for name in "abcde":
        assert not (tmp_path / name).exists()


def test_cli_build_with_rescore(tmp_path):
    x = clustered(400, dim=DIM)
    compact, floats = pair(tmp_path, x, "binary")
    runner = CliRunner()
    out = runner.invoke(
        cli, ["index", "build", str(compact), "-o", str(tmp_path / "ix"), "--rescore-with", str(floats), "-q"]
    )
    assert out.exit_code == 0, out.output
    assert "re-scoring: top k x 10" in out.output
    plain = runner.invoke(cli, ["index", "build", str(compact), "-o", str(tmp_path / "plain"), "-q"])
    assert plain.exit_code == 0 and "give their float features with --rescore-with" in plain.output
    bad = runner.invoke(cli, ["index", "build", str(floats), "-o", str(tmp_path / "x"), "--rescore-with", str(floats)])
    assert bad.exit_code != 0 and "Traceback" not in bad.output and "re-scoring" in bad.output


def test_text_search_and_serve_rescore_real_embeddings(tiny_gpt2_shared, tmp_path):
    """Embedded like `embed --vector-dtype binary` and float32: `search` by text and `serve` re-rank alike."""
    import httpx
    from conftest import sample_texts
    from test_serve import Running

    from embedkit.embed import embed_file
    from embedkit.serve import ServeSettings, parse_artefact

    texts = sample_texts(40, seed=11)
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    for dtype in ("binary", "float32"):
        config = ExtractConfig(model=tiny_gpt2_shared, dtype=dtype)
        embed_file(tmp_path / "in.txt", tmp_path / f"{dtype}.parquet", config, device="cpu", progress=False)
    build_index(tmp_path / "binary.parquet", tmp_path / "ix", kind="flat", rescore_with=tmp_path / "float32.parquet")
    index = Index.load(tmp_path / "ix", device="cpu")
    hits = index.search(texts[5], k=3).hits()
    # The query embeds to row 5's float vector: cosine 1 once re-scored; the sign vector alone scores far less.
    assert hits[0]["id"] == 5 and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert index.search(texts[5], k=3, rescore=False).hits()[0]["score"] < 0.99
    settings = ServeSettings(
        model=None, indexes=(parse_artefact(f"docs={tmp_path / 'ix'}", "index"),), classifiers=(), device="cpu"
    )
    running = Running(settings)
    try:
        body = httpx.post(running.url + "/v1/search", json={"query": texts[5], "k": 3}, timeout=60).json()
    finally:
        running.stop()
    served = body["data"][0]["hits"]
    assert [h["id"] for h in served] == [h["id"] for h in hits]
    assert served[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_a_damaged_rescore_entry_or_file_is_refused_at_load(tmp_path):
    x = clustered(300, dim=DIM)
    compact, floats = pair(tmp_path, x, "binary")
    build_index(compact, tmp_path / "ix", kind="flat", rescore_with=floats)
    manifest = tmp_path / "ix" / "index.json"
    meta = json.loads(manifest.read_text())
    meta["rescore"]["factor"] = 0
    manifest.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="'rescore'"):
        Index.load(tmp_path / "ix")
    meta["rescore"]["factor"] = 10
    manifest.write_text(json.dumps(meta))
    stored = np.load(tmp_path / "ix" / RESCORE_FILE)
    np.save(tmp_path / "ix" / RESCORE_FILE, stored[:, ::-1].copy())  # same shape, other values
    with pytest.raises(InputError, match="sha256|modified"):
        Index.load(tmp_path / "ix")


def test_float_vectors_from_a_sharded_dataset(tmp_path):
    """The float features may be a sharded dataset (embed -o DIR/): read shard by shard, same index."""
    from embedkit.dataset import DatasetWriter, write_shard

    x = clustered(900, dim=DIM)
    compact, floats = pair(tmp_path, x, "binary")
    table = pq.read_table(floats)
    meta = json.loads(table.schema.metadata[b"embedkit"])
    with DatasetWriter(tmp_path / "ds", {"test": 1}) as writer:
        for i, start in enumerate(range(0, 900, 250)):
            writer.record(write_shard(writer.staging, i, table.replace_schema_metadata(None).slice(start, 250)))
        writer.finish(meta)
    build_index(compact, tmp_path / "ix-file", kind="flat", rescore_with=floats)
    build_index(compact, tmp_path / "ix-ds", kind="flat", rescore_with=tmp_path / "ds", batch_rows=100)
    np.testing.assert_array_equal(
        np.load(tmp_path / "ix-ds" / RESCORE_FILE), np.load(tmp_path / "ix-file" / RESCORE_FILE)
    )
    runner = CliRunner()
    out = runner.invoke(
        cli, ["index", "build", str(compact), "-o", str(tmp_path / "ix-cli"), "--rescore-with", str(tmp_path / "ds")]
    )
    assert out.exit_code == 0, out.output
