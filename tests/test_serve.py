"""embedkit serve: a real uvicorn server on a free loopback port, driven by the openai client, httpx and a
headless Chromium. Vectors are compared with what `embedkit embed` stored for the same texts."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import RunningServer, free_socket, sample_texts

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from embedkit.serve import Batching, Limits, ServeSettings, parse_artefact  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEY = "test-key-123"
TOL = 1e-5


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory, tiny_gpt2_shared):
    """Features (embedded like `embedkit embed`), an index and a classifier made from them, all one model."""
    import csv

    from embedkit import ExtractConfig
    from embedkit.classify import train
    from embedkit.embed import embed_file
    from embedkit.index import build_index
    from embedkit.store import open_features

    root = tmp_path_factory.mktemp("serve")
    texts = sample_texts(60, seed=3)
    labels = ["cats" if i % 2 else "cars" for i in range(60)]
    src = root / "docs.csv"
    with src.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["doc_id", "text", "label"])
        writer.writerows((f"d{i}", t, lab) for i, (t, lab) in enumerate(zip(texts, labels)))
    features = root / "docs.parquet"
    config = ExtractConfig(model=tiny_gpt2_shared, layers=(-1,), pooling=("mean",))
    embed_file(src, features, config, id_column="doc_id", keep=("text", "label"), device="cpu", progress=False)
    build_index(features, root / "docs-index", kind="flat")
    train(features, "label", root / "topic", test_size=0)
    matrix, table, _ = open_features(features).load("embedding", extra=("text", "n_tokens"))
    return {
        "root": root,
        "features": features,
        "index": root / "docs-index",
        "classifier": root / "topic",
        "texts": table.column("text").to_pylist(),
        "ids": table.column("id").to_pylist(),
        "vectors": matrix,
        "n_tokens": table.column("n_tokens").to_pylist(),
        "model": tiny_gpt2_shared,
    }


Running = RunningServer


def _settings(artefacts, **changes) -> ServeSettings:
    base = dict(
        model=artefacts["model"],
        indexes=(parse_artefact(f"docs={artefacts['index']}", "index"),),
        classifiers=(parse_artefact(str(artefacts["classifier"]), "classifier"),),
        device="cpu",
    )
    return ServeSettings(**{**base, **changes})


@pytest.fixture(scope="module")
def server(artefacts):
    running = Running(_settings(artefacts))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def strict(artefacts):
    """A server with an API key and small limits."""
    limits = Limits(max_inputs=4, max_chars=200, max_body_bytes=2_000, max_k=5)
    running = Running(_settings(artefacts, model=None, classifiers=(), api_key=KEY, limits=limits))
    yield running
    running.stop()


def _post(url: str, path: str, body, **kwargs) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=30, **kwargs)


def _assert_error(response: httpx.Response, status: int, code: str | None = None, *, text: str = "") -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and isinstance(error["type"], str)
    if code is not None:
        assert error["code"] == code, error
    assert text in error["message"], error
    return error


# ---------------------------------------------------------------------------------------------- embeddings


def test_openai_client_gets_the_vectors_embed_stored(server, artefacts):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)
    texts = artefacts["texts"][:7]
    # Told nothing, the client asks for base64 and decodes it itself; ask for floats too.
    for options in ({}, {"encoding_format": "float"}):
        response = client.embeddings.create(input=texts, model="docs", **options)
        got = np.array([d.embedding for d in response.data], dtype=np.float32)
        assert [d.index for d in response.data] == list(range(7))
        assert np.abs(got - artefacts["vectors"][:7]).max() <= TOL
        assert response.usage.prompt_tokens == response.usage.total_tokens == sum(artefacts["n_tokens"][:7])
        assert response.model == "docs"
    one = client.embeddings.create(input=texts[3], model=artefacts["model"])
    assert np.abs(np.array(one.data[0].embedding) - artefacts["vectors"][3]).max() <= TOL


def test_base64_is_little_endian_float32(server, artefacts):
    body = _post(
        server.url, "/v1/embeddings", {"input": artefacts["texts"][0], "model": "docs", "encoding_format": "base64"}
    ).json()
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert np.abs(np.frombuffer(raw, dtype="<f4") - artefacts["vectors"][0]).max() <= TOL


def test_token_id_inputs_embed_like_the_text_they_tokenise_to(server, artefacts):
    embedder = server.services.models["docs"]
    _, contents = embedder.extractor.tokenize(artefacts["texts"][:3])
    many = _post(server.url, "/v1/embeddings", {"input": contents, "model": "docs"}).json()
    single = _post(server.url, "/v1/embeddings", {"input": contents[1], "model": "docs"}).json()
    got = np.array([d["embedding"] for d in many["data"]], dtype=np.float32)
    assert np.abs(got - artefacts["vectors"][:3]).max() <= TOL
    assert np.abs(np.array(single["data"][0]["embedding"]) - artefacts["vectors"][1]).max() <= TOL
    assert many["usage"]["prompt_tokens"] == sum(len(c) for c in contents)
    bad = _post(server.url, "/v1/embeddings", {"input": [[1, 2], [embedder.extractor.vocab_size]], "model": "docs"})
    _assert_error(bad, 422, "invalid_value", text="vocabulary")


def test_model_may_be_left_out_when_one_model_serves_every_name(server, artefacts):
    body = _post(server.url, "/v1/embeddings", {"input": artefacts["texts"][0]}).json()
    assert body["model"] in server.services.models
    assert np.abs(np.array(body["data"][0]["embedding"]) - artefacts["vectors"][0]).max() <= TOL


def test_dimensions_truncate_and_renormalise(server, artefacts):
    body = _post(
        server.url, "/v1/embeddings", {"input": artefacts["texts"][:2], "model": "docs", "dimensions": 8}
    ).json()
    got = np.array([d["embedding"] for d in body["data"]])
    full = artefacts["vectors"][:2, :8]
    assert got.shape == (2, 8)
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-6)
    assert np.abs(got - full / np.linalg.norm(full, axis=1, keepdims=True)).max() <= TOL
    too_many = _post(server.url, "/v1/embeddings", {"input": "x", "model": "docs", "dimensions": 10_000})
    _assert_error(too_many, 422, "invalid_value", text="dimensions")


def test_artefacts_with_the_same_settings_share_one_model(server):
    assert set(server.services.models) == {"docs", "topic", server.services.embedders[0].config.model}
    assert len(server.services.embedders) == 1
    listed = httpx.get(server.url + "/v1/models").json()
    kinds = {m["id"]: m["embedkit"]["kind"] for m in listed["data"]}
    assert kinds["docs"] == "index" and kinds["topic"] == "classifier"


@pytest.mark.parametrize(
    "body, status, code, text",
    [
        ({"input": 5, "model": "docs"}, 422, "invalid_value", "input"),
        ({"input": ["a", 3], "model": "docs"}, 422, "invalid_value", ""),
        ({"input": "", "model": "docs"}, 422, "empty_input", "empty"),
        ({"input": "   ", "model": "docs"}, 422, "empty_input", "empty"),
        ({"input": [], "model": "docs"}, 422, "empty_input", "empty list"),
        ({"input": [[]], "model": "docs"}, 422, "empty_input", "empty token array"),
        ({"input": "hi", "model": "docs", "encoding_format": "int8"}, 422, "invalid_value", "encoding_format"),
        ({"input": "hi", "model": "docs", "dimension": 3}, 422, "invalid_value", "dimension"),
        ({"input": "hi", "model": "text-embedding-3-small"}, 404, "model_not_found", "docs"),
    ],
)
def test_bad_embedding_requests_get_openai_errors(server, body, status, code, text):
    _assert_error(_post(server.url, "/v1/embeddings", body), status, code, text=text)


def test_malformed_json_is_422_in_openai_shape(server):
    response = httpx.post(
        server.url + "/v1/embeddings",
        content=b'{"input": "a",',
        timeout=10,
        headers={"content-type": "application/json"},
    )
    _assert_error(response, 422, "invalid_value", text="not valid JSON")
    _assert_error(httpx.get(server.url + "/v1/nothing-here"), 404, "not_found")


# ---------------------------------------------------------------------------------------------- search, predict


def test_search_returns_hits_with_stored_columns(server, artefacts):
    texts = artefacts["texts"]
    body = _post(server.url, "/v1/search", {"query": [texts[4], texts[9]], "k": 3}).json()
    assert body["index"] == "docs" and len(body["data"]) == 2
    for query, row in zip((4, 9), body["data"]):
        top = row["hits"][0]
        assert len(row["hits"]) == 3 and top["id"] == artefacts["ids"][query]
        assert top["text"] == texts[query] and top["score"] == pytest.approx(1.0, abs=1e-4)
        assert set(top) == {"rank", "id", "score", "text"}  # the index stores text by default
    from embedkit.index import Index

    offline = Index.load(artefacts["index"]).search(texts[4], k=3).hits()
    assert [h["id"] for h in offline] == [h["id"] for h in body["data"][0]["hits"]]


def test_search_where_filters_on_stored_columns(server, artefacts):
    texts, ids = artefacts["texts"], artefacts["ids"]
    body = _post(server.url, "/v1/search", {"query": texts[4], "k": 3, "where": f"id <> '{ids[4]}'"}).json()
    assert len(body["data"][0]["hits"]) == 3 and ids[4] not in [h["id"] for h in body["data"][0]["hits"]]
    nothing = _post(server.url, "/v1/search", {"query": texts[4], "where": "id = 'no such id'"}).json()
    assert nothing["data"][0]["hits"] == [] and "no row matches" in nothing["notes"][0]
    _assert_error(_post(server.url, "/v1/search", {"query": "x", "where": "label = 'a'"}), 422, text="stores: id, text")


def test_predict_matches_the_offline_classifier(server, artefacts):
    from embedkit.classify import load_model

    texts = artefacts["texts"][:6]
    body = _post(server.url, "/v1/predict", {"input": texts}).json()
    labels, proba = load_model(artefacts["classifier"]).predict_texts(texts)
    assert [d["label"] for d in body["data"]] == labels.tolist()
    for row, p in zip(body["data"], proba):
        assert list(row["probabilities"].values()) == pytest.approx(p.tolist(), abs=1e-5)
    single = _post(server.url, "/v1/predict", {"input": texts[0], "classifier": "topic"}).json()
    assert single["data"][0]["label"] == labels[0]
    _assert_error(
        _post(server.url, "/v1/predict", {"input": "x", "classifier": "nope"}),
        404,
        "classifier_not_found",
        text="topic",
    )


def test_health_models_and_metrics(server):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    _post(server.url, "/v1/embeddings", {"input": ["one", "two"], "model": "docs"})
    text = httpx.get(server.url + "/metrics").text
    assert 'embedkit_requests_total{route="/v1/embeddings",status="200"}' in text
    assert "embedkit_request_seconds_bucket" in text and "embedkit_batch_inputs_bucket" in text
    assert "embedkit_tokens_total" in text and "embedkit_queue_depth" in text


# ---------------------------------------------------------------------------------------------- limits, auth


def test_api_key_guards_every_route_but_healthz_and_the_page(strict):
    from openai import AuthenticationError, OpenAI

    assert httpx.get(strict.url + "/healthz").status_code == 200
    assert "<title>embedkit serve</title>" in httpx.get(strict.url + "/").text  # static, no data: asks for the key
    for path in ("/v1/models", "/metrics"):
        _assert_error(httpx.get(strict.url + path), 401, "invalid_api_key")
    wrong = {"Authorization": "Bearer nope"}
    _assert_error(_post(strict.url, "/v1/search", {"query": "a"}, headers=wrong), 401, "invalid_api_key")
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=strict.url + "/v1", api_key="nope", max_retries=0).embeddings.create(input="a", model="docs")
    ok = OpenAI(base_url=strict.url + "/v1", api_key=KEY, max_retries=0).embeddings.create(input="a cat", model="docs")
    assert len(ok.data[0].embedding) == 32


def test_limits_are_enforced_before_model_work(strict):
    auth = {"Authorization": f"Bearer {KEY}"}
    post = lambda path, body: _post(strict.url, path, body, headers=auth)  # noqa: E731
    _assert_error(post("/v1/embeddings", {"input": ["a"] * 5}), 422, "too_many_inputs", text="at most 4")
    _assert_error(post("/v1/embeddings", {"input": "word " * 60}), 422, "input_too_long", text="at most 200")
    _assert_error(post("/v1/search", {"query": "cat", "k": 0}), 422, "invalid_value", text="k must be")
    _assert_error(post("/v1/search", {"query": "cat", "k": 6}), 422, "invalid_value", text="between 1 and 5")
    _assert_error(post("/v1/search", {"query": "cat", "k": "3"}), 422, "invalid_value", text="k")
    _assert_error(post("/v1/embeddings", {"input": "x" * 3_000}), 413, "request_too_large", text="2,000-byte")

    def chunked():  # no Content-Length: the limit must hold while the stream is read
        yield b'{"input": ["'
        for _ in range(30):
            yield b"y" * 100
        yield b'"]}'

    response = httpx.post(
        strict.url + "/v1/embeddings",
        content=chunked(),
        timeout=10,
        headers={**auth, "content-type": "application/json"},
    )
    _assert_error(response, 413, "request_too_large")
    assert post("/v1/search", {"query": "cat", "k": 5}).status_code == 200


def test_a_full_queue_is_503_with_retry_after(artefacts):
    from embedkit.serve.batcher import _Job
    from embedkit.serve.server import build

    settings = _settings(artefacts, classifiers=(), model=None, limits=Limits(max_queue=1))
    app, services = build(settings)  # workers never start: nothing drains the queue

    async def scenario():
        loop = asyncio.get_running_loop()
        services.models["docs"].batcher._queue.put_nowait(_Job(["x"], None, loop, loop.create_future()))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            return await client.post("/v1/embeddings", json={"input": "a cat"})

    response = asyncio.run(scenario())
    _assert_error(response, 503, "overloaded", text="retry")
    assert response.headers["retry-after"] == "1"


def test_exposed_address_without_key_warns(artefacts):
    assert ServeSettings(host="0.0.0.0").exposure_warning() is not None
    assert ServeSettings(host="0.0.0.0", api_key="k").exposure_warning() is None
    assert ServeSettings(host="127.0.0.1").exposure_warning() is None
    from click.testing import CliRunner

    from embedkit.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--index", str(artefacts["root"] / "missing")])
    assert "warning: serving on 0.0.0.0 without --api-key" in result.output
    assert result.exit_code == 3  # the missing index stops it before anything is bound


def test_artefact_names_come_from_the_directory_or_name_equals_dir():
    from embedkit.errors import ConfigError

    assert parse_artefact("runs/docs-index/", "index").name == "docs-index"
    named = parse_artefact("docs=runs/a=b", "index")
    assert (named.name, str(named.path)) == ("docs", "runs/a=b")
    with pytest.raises(ConfigError, match="NAME=DIR"):
        parse_artefact("=x", "index")
    twice = (parse_artefact("a/ix", "index"), parse_artefact("b/ix", "index"))
    with pytest.raises(ConfigError, match="share the name ix"):
        ServeSettings(indexes=twice)


def test_stored_trust_remote_code_is_never_used(artefacts, tmp_path):
    index = tmp_path / "ix"
    shutil.copytree(artefacts["index"], index)
    meta = json.loads((index / "index.json").read_text())
    meta["config"]["trust_remote_code"] = True
    (index / "index.json").write_text(json.dumps(meta))
    from embedkit.serve.metrics import Metrics
    from embedkit.serve.registry import load_services

    services = load_services(ServeSettings(indexes=(parse_artefact(str(index), "index"),), device="cpu"), Metrics())
    assert services.models["ix"].extractor.config.trust_remote_code is False
    flagged = load_services(
        ServeSettings(indexes=(parse_artefact(str(index), "index"),), device="cpu", trust_remote_code=True), Metrics()
    )
    assert flagged.models["ix"].extractor.config.trust_remote_code is True


# ---------------------------------------------------------------------------------------------- batching


def test_concurrent_requests_share_one_model_run_and_keep_their_rows(extractor_factory):
    from embedkit.serve.batcher import MicroBatcher

    extractor = extractor_factory(batch_tokens=64)
    steps = []
    batcher = MicroBatcher(extractor, Batching(wait_ms=1000, max_inputs=64), max_queue=16, on_batch=steps.append)
    texts = sample_texts(10, seed=9)
    batcher.start()

    async def scenario():
        return await asyncio.gather(*(batcher.embed_texts(texts[i : i + 2]) for i in range(0, 10, 2)))

    try:
        results = asyncio.run(scenario())
    finally:
        batcher.close()
    assert [s.requests for s in steps] == [5] and steps[0].inputs == 10
    expected = extractor.embed(texts)
    for i, result in enumerate(results):
        assert np.abs(result.vectors - expected[2 * i : 2 * i + 2]).max() <= TOL


def test_a_request_whose_client_left_is_not_computed(extractor_factory):
    from embedkit.serve.batcher import MicroBatcher

    steps = []
    batcher = MicroBatcher(extractor_factory(), Batching(wait_ms=1000), max_queue=8, on_batch=steps.append)
    batcher.start()

    async def scenario():
        kept = [asyncio.ensure_future(batcher.embed_texts([t])) for t in ("one text", "two texts")]
        gone = asyncio.ensure_future(batcher.embed_texts(["left", "early", "too"]))
        await asyncio.sleep(0.05)  # all three queued; the worker waits up to 1 s for company: margin on a busy box
        gone.cancel()
        return await asyncio.gather(*kept)

    try:
        results = asyncio.run(scenario())
    finally:
        batcher.close()
    assert [s.requests for s in steps] == [2] and steps[0].inputs == 2
    assert [r.vectors.shape for r in results] == [(1, 32), (1, 32)]


def test_a_bad_row_fails_only_its_own_request(extractor_factory):
    from embedkit.errors import InputError
    from embedkit.serve.batcher import MicroBatcher, QueueFullError

    batcher = MicroBatcher(extractor_factory(), Batching(wait_ms=200), max_queue=4)
    batcher.start()

    async def scenario():
        return await asyncio.gather(
            batcher.embed_texts(["fine text"]), batcher.embed_tokens([[]]), return_exceptions=True
        )

    try:
        good, bad = asyncio.run(scenario())
    finally:
        batcher.close()
    assert good.vectors.shape == (1, 32) and isinstance(bad, InputError)

    idle = MicroBatcher(extractor_factory(), Batching(), max_queue=1)  # not started: nothing drains it

    async def overfill():
        first = asyncio.ensure_future(idle.embed_texts(["a"]))
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError):
            await idle.embed_texts(["b"])
        first.cancel()

    asyncio.run(overfill())


# ---------------------------------------------------------------------------------------------- process


def test_sigterm_finishes_the_request_in_flight(artefacts):
    with free_socket() as probe:
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # A lone request waits up to --batch-wait-ms for company: 3 s keeps it in flight while SIGTERM arrives, with
    # a second of margin for the request to reach the server on a busy machine.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "embedkit",
            "serve",
            "--model",
            artefacts["model"],
            "--port",
            str(port),
            "--device",
            "cpu",
            "--batch-wait-ms",
            "3000",
            "-q",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # Loading torch and the model in a fresh process took 150-175 s at load average 20 on 2 shared cores.
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "server did not start"
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        result = {}
        thread = threading.Thread(target=lambda: result.update(r=_post(url, "/v1/embeddings", {"input": "a cat"})))
        started = time.monotonic()
        thread.start()
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        thread.join(20)
        assert result["r"].status_code == 200 and len(result["r"].json()["data"][0]["embedding"]) == 32
        assert time.monotonic() - started >= 2.9  # it really was in flight when the signal came
        # uvicorn re-raises the signal once it has shut down, so the exit status says SIGTERM ended it.
        assert proc.wait(20) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------------- web page


def _chromium() -> str | None:
    return os.environ.get("EMBEDKIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def test_web_page_searches_and_labels_in_a_real_browser(server, artefacts):
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium found: apt-get install chromium, or set EMBEDKIT_CHROMIUM to its path")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.goto(server.url + "/")
            page.wait_for_function("document.getElementById('index-select').options.length > 0")
            page.fill("#query", artefacts["texts"][7])
            page.click("#search-btn")
            page.wait_for_selector("#hits li.hit")
            hits = page.locator("#hits li.hit")
            assert hits.count() == 5
            assert artefacts["texts"][7] in hits.first.inner_text()
            assert " ms" in page.inner_text("#search-latency")
            page.fill("#label-input", artefacts["texts"][2])
            page.click("#label-btn")
            page.wait_for_selector("#label")
            label = page.inner_text("#label")
            assert label.startswith("label: ") and label.split(": ", 1)[1] in ("cats", "cars")
            assert " ms" in page.inner_text("#label-latency")
        finally:
            browser.close()


def test_onednn_primitive_caches_are_bounded_unless_the_user_set_them(monkeypatch):
    # oneDNN compiles a primitive per input shape and caches 1,024 of them by default: a server's batches of
    # every token count grew its private memory for thousands of requests (benchmarks/RESULTS.md, Serving).
    from embedkit.serve import server

    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "300")
    server._bound_onednn_caches()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == server.ONEDNN_CACHE_ENTRIES
    assert os.environ["LRU_CACHE_CAPACITY"] == "300"  # the user's own setting wins
