"""Every backend in every later stage (#21): features embedded with ``openvino`` or ``ort-int8`` are searched,
classified (``predict``), served (HTTP search and predict) and made by the Ray engine with the backend recorded
in their metadata, and queries are embedded like the stored rows (cosine >= the backend's tolerance).

ort-int8 quantises activations per batch, so a query embedded alone moves slightly from the same text embedded
among the file's rows: its bar is lower than OpenVINO's (exact) one. The runtimes are in the dev extra; a test
is skipped only where its runtime is not installed.
"""

from __future__ import annotations

import csv
import importlib.util

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import RunningServer, sample_texts

from embedkit import ExtractConfig
from embedkit.extract import runtime_backends

TEXTS = sample_texts(40, seed=13, max_words=50)
LABELS = ["cats" if i % 2 else "cars" for i in range(len(TEXTS))]
# Minimum cosine between a query's vector and the stored vector of the same text.
TOLERANCE = {"openvino": 0.99999, "ort-int8": 0.99}
BACKENDS = [
    pytest.param(
        backend,
        marks=pytest.mark.skipif(
            not all(importlib.util.find_spec(p) for p in runtime_backends.RUNTIME_BACKENDS[backend][0]),
            reason=f"{backend}'s runtime is not installed (pip install -e '.[dev]')",
        ),
    )
    for backend in TOLERANCE
]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module", params=BACKENDS)
def made(request, tmp_path_factory, tiny_gpt2_shared):
    """Features embedded with the backend, a flat index and a classifier built from them."""
    from embedkit.classify import train
    from embedkit.embed import embed_file
    from embedkit.index import build_index
    from embedkit.store import open_features

    backend = request.param
    root = tmp_path_factory.mktemp(backend)
    src = root / "docs.csv"
    with src.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["doc_id", "text", "label"])
        writer.writerows((f"d{i}", t, label) for i, (t, label) in enumerate(zip(TEXTS, LABELS)))
    features = root / "docs.parquet"
    config = ExtractConfig(model=tiny_gpt2_shared, backend=backend)
    embed_file(src, features, config, id_column="doc_id", keep=("text", "label"), device="cpu", progress=False)
    build_index(features, root / "index", kind="flat")
    train(features, "label", root / "classifier", test_size=0)
    vectors, table, _ = open_features(features).load("embedding", extra=("text",))
    return {
        "backend": backend,
        "root": root,
        "src": src,
        "features": features,
        "index": root / "index",
        "classifier": root / "classifier",
        "vectors": vectors,
        "ids": table.column("id").to_pylist(),
    }


def test_the_features_record_the_backend(made):
    import json

    meta = json.loads(pq.read_schema(made["features"]).metadata[b"embedkit"])
    assert meta["config"]["backend"] == made["backend"]


def test_search_embeds_queries_with_the_recorded_backend(made):
    from embedkit.index import Index

    index = Index.load(made["index"])
    result = index.search([TEXTS[3], TEXTS[11]], k=3)
    hits = [result.hits(0), result.hits(1)]
    assert [h[0]["id"] for h in hits] == [made["ids"][3], made["ids"][11]]
    assert hits[0][0]["score"] == pytest.approx(1.0, abs=1 - TOLERANCE[made["backend"]] + 1e-4)
    assert index.extractor.config.backend == index.extractor.engine == made["backend"]


def test_predict_embeds_texts_with_the_recorded_backend(made):
    from embedkit.classify import load_model
    from embedkit.classify.predict import predict_file

    model = load_model(made["classifier"])
    extractor = model.extractor()
    assert extractor.config.backend == extractor.engine == made["backend"]
    again = extractor.embed(TEXTS)  # the whole file in one call: the same batches as the embed
    assert cosines(again, made["vectors"]).min() >= TOLERANCE[made["backend"]]
    alone = np.concatenate([extractor.embed([t]) for t in TEXTS[:4]])  # one query at a time: other batches
    assert cosines(alone, made["vectors"][:4]).min() >= TOLERANCE[made["backend"]]

    from_text = made["root"] / "from-text.parquet"
    from_features = made["root"] / "from-features.parquet"
    predict_file(made["classifier"], made["src"], from_text, progress=False)
    predict_file(made["classifier"], made["features"], from_features, progress=False)
    a, b = pq.read_table(from_text), pq.read_table(from_features)
    assert a.column("id").to_pylist() == b.column("id").to_pylist()
    assert a.column("prediction").to_pylist() == b.column("prediction").to_pylist()


Running = RunningServer


def test_serve_searches_and_predicts_with_the_recorded_backend(made):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from embedkit.serve import ServeSettings, parse_artefact

    settings = ServeSettings(
        model=None,
        indexes=(parse_artefact(f"docs={made['index']}", "index"),),
        classifiers=(parse_artefact(f"topic={made['classifier']}", "classifier"),),
        device="cpu",
    )
    running = Running(settings)
    try:
        served = [e.extractor for e in running.services.embedders]
        assert served and all(ex.config.backend == ex.engine == made["backend"] for ex in served)
        body = httpx.post(running.url + "/v1/search", json={"query": [TEXTS[5], TEXTS[8]], "k": 2}, timeout=30).json()
        for query, row in zip((5, 8), body["data"]):
            assert row["hits"][0]["id"] == made["ids"][query]
            assert row["hits"][0]["score"] == pytest.approx(1.0, abs=1 - TOLERANCE[made["backend"]] + 1e-4)
        body = httpx.post(running.url + "/v1/predict", json={"input": TEXTS[:6]}, timeout=30).json()
        assert len(body["data"]) == 6
        from embedkit.classify import load_model

        want, _ = load_model(made["classifier"]).predict_vectors(made["vectors"][:6])
        assert [row["label"] for row in body["data"]] == list(want)
    finally:
        running.stop()


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray", reason="the Ray engine needs the ray extra: pip install -e '.[dev]'")
    if ray.is_initialized():  # another test module's session: use it, leave it running
        yield ray
        return
    # address="local": a fresh instance, never another test session's cluster running on the same machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.skipif(not importlib.util.find_spec("openvino"), reason="openvino is not installed")
def test_ray_engine_embeds_with_the_backend_asked_for_and_records_it(ray_session, tiny_gpt2_shared, tmp_path):
    from click.testing import CliRunner

    from embedkit import Extractor
    from embedkit.cli import cli
    from embedkit.dataset import read_manifest
    from embedkit.store import open_features

    src = tmp_path / "in.csv"
    with src.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text"], *([t] for t in TEXTS)])
    out = tmp_path / "ray"
    args = ["embed", str(src), "-o", str(out), "--model", tiny_gpt2_shared, "--backend", "openvino"]
    result = CliRunner().invoke(cli, [*args, "--engine", "ray", "--workers", "1", "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    assert read_manifest(out).features["config"]["backend"] == "openvino"
    stored, _, _ = open_features(out).load("embedding")
    reference = Extractor(ExtractConfig(model=tiny_gpt2_shared), device="cpu").embed(TEXTS)
    assert cosines(stored, reference).min() >= TOLERANCE["openvino"]


def test_torch_and_openvino_features_go_in_one_index(made, tiny_gpt2_shared, tmp_path):
    """auto may run OpenVINO on one machine and torch on another: their vectors are the same, so they mix."""
    if made["backend"] != "openvino":
        pytest.skip("ort-int8 vectors are approximate: they must not mix with torch's")
    import shutil

    from embedkit.embed import embed_file
    from embedkit.index import Index
    from embedkit.index.add import add_to_index

    src = tmp_path / "more.csv"
    with src.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["doc_id", "text"], *([f"t{i}", t] for i, t in enumerate(TEXTS[:6]))])
    more = tmp_path / "more.parquet"
    embed_file(src, more, ExtractConfig(model=tiny_gpt2_shared), id_column="doc_id", device="cpu", progress=False)
    index_dir = tmp_path / "index"
    shutil.copytree(made["index"], index_dir)
    add_to_index(index_dir, more)
    index = Index.load(index_dir)
    assert index.config.backend == "openvino"  # queries are still embedded as the index was built
    hits = index.search([TEXTS[2]], k=2).hits(0)
    assert {h["id"] for h in hits} == {made["ids"][2], "t2"}


@pytest.mark.parametrize("made", [p for p in BACKENDS if p.values == ("openvino",)], indirect=True)
def test_openvino_features_are_searched_without_openvino_installed(made, monkeypatch, caplog):
    """OpenVINO makes torch's fp32 vectors, so an index whose features auto ran on OpenVINO still answers queries on
    a machine without it (re-embedding on torch, with a warning); a backend named by the user is left alone (it
    fails with the extra to install)."""
    from embedkit.extract import backend_choice
    from embedkit.index import Index

    real = backend_choice._installed
    monkeypatch.setattr(backend_choice, "_installed", lambda name: name != "openvino" and real(name))
    index = Index.load(made["index"])
    with caplog.at_level("WARNING"):
        result = index.search([TEXTS[3]], k=1)
    assert result.hits(0)[0]["id"] == made["ids"][3]
    assert result.hits(0)[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert index.extractor.engine == "torch" and "not installed here" in caplog.text
    asked = ExtractConfig(model="m", backend="openvino")  # no provenance: from the command line, not an artefact
    assert backend_choice.runnable_here(asked) is asked
