"""The runtime backends (#21): OpenVINO fp32 and ONNX Runtime int8 driven by embedkit, on the tiny GPT-2.

Each backend's vectors are compared with the torch backend's for every pooling at the embeddings, a middle block
and the final output; bad rows keep their status; the export is cached, reused, and rebuilt when corrupt. A
backend whose runtime is not installed is skipped with the reason (the extras ``openvino`` and ``onnx``).
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from conftest import sample_texts

from embedkit import ConfigError, ExtractConfig, Extractor
from embedkit.config import POOLING_MODES
from embedkit.extract import onnx_export, runtime_backends
from embedkit.extract.kernel_choice import cache_dir

TEXTS = sample_texts(24, seed=21, max_words=80)
LAYERS = (0, 1, -1)


def installed(backend: str) -> bool:
    return all(importlib.util.find_spec(name) is not None for name in runtime_backends.RUNTIME_BACKENDS[backend][0])


def needs(backend: str):
    packages = " and ".join(runtime_backends.RUNTIME_BACKENDS[backend][0])
    return pytest.mark.skipif(not installed(backend), reason=f"{packages} not installed (pip install embedkit[...])")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def reference(tiny_gpt2_shared):
    ex = Extractor(ExtractConfig(model=tiny_gpt2_shared, layers=LAYERS, pooling=POOLING_MODES), device="cpu")
    return ex.embed(TEXTS)


def make(model: str, backend: str, **config) -> Extractor:
    config.setdefault("layers", LAYERS)
    config.setdefault("pooling", POOLING_MODES)
    return Extractor(ExtractConfig(model=model, backend=backend, **config), device="cpu", batch_tokens=256)


@needs("openvino")
def test_openvino_matches_torch_at_every_layer_and_pooling(tiny_gpt2_shared, reference):
    ex = make(tiny_gpt2_shared, "openvino")
    assert ex.config.to_dict()["backend"] == "openvino"
    got = ex.embed(TEXTS)
    assert set(got) == set(reference)
    for column, want in reference.items():
        assert got[column].dtype == np.float32
        assert cosines(got[column], want).min() >= 0.99999, column
        assert np.abs(got[column] - want).max() <= 1e-3 * max(1.0, float(np.abs(want).max())), column


@needs("ort-int8")
def test_ort_int8_is_close_to_torch_at_every_layer_and_pooling(tiny_gpt2_shared, reference):
    ex = make(tiny_gpt2_shared, "ort-int8")
    got = ex.embed(TEXTS)
    for column, want in reference.items():
        # The tiny model is 32 wide with random weights: int8 rounding weighs more there than at GPT-2's 768.
        # GPT-2 small's figure (>= 0.999, the bar) is in benchmarks/RESULTS.md.
        assert cosines(got[column], want).min() >= 0.99, column
        assert not np.array_equal(got[column], want)  # it really ran in int8


@needs("openvino")
def test_a_shallow_layer_exports_only_the_blocks_it_needs(tiny_gpt2_shared, reference):
    ex = make(tiny_gpt2_shared, "openvino", layers=(1,), pooling=("mean",))
    got = ex.embed(TEXTS)
    assert cosines(got, reference["embedding_l1_mean"]).min() >= 0.99999
    runner = next(iter(runtime_backends._runners[ex.loaded.model].values()))
    import onnx

    graph = onnx.load(str(runner.directory / "model.onnx"), load_external_data=False).graph
    blocks = {node.name.split("/")[2] for node in graph.node if node.name.startswith("/model/h.")}
    assert blocks == {"h.0"}  # block 2 of 2 was dropped from the graph
    assert len(ex.loaded.blocks) == 2  # and put back in the torch model


@needs("openvino")
def test_bad_rows_keep_their_status(tiny_gpt2_shared):
    ex = make(tiny_gpt2_shared, "openvino", layers=(-1,), pooling=("mean",))
    result = ex.encode(["a fine text", None, "", 3.5, "another fine text"])
    assert result.status == ["ok", "null", "empty", "not_string", "ok"]
    assert list(result.valid) == [True, False, False, False, True]
    (vectors,) = result.vectors.values()
    assert np.isnan(vectors[1:4]).all() and np.isfinite(vectors[[0, 4]]).all()


@needs("openvino")
def test_the_export_is_cached_reused_and_rebuilt_when_corrupt(tiny_gpt2_shared, monkeypatch, caplog):
    exports = []
    real_export = onnx_export.export
    monkeypatch.setattr(onnx_export, "export", lambda graph, path: (exports.append(path), real_export(graph, path)))
    config = {"layers": (1, -1), "pooling": ("last",)}
    first = make(tiny_gpt2_shared, "openvino", **config).embed(TEXTS)
    if exports:  # another test of this session may have exported the same entry already
        assert len(exports) == 1
    exports.clear()
    again = make(tiny_gpt2_shared, "openvino", **config)  # a new model object: a new runner, the same entry
    np.testing.assert_allclose(again.embed(TEXTS)["embedding_l1_last"], first["embedding_l1_last"], rtol=1e-5)
    assert exports == []
    directory = next(iter(runtime_backends._runners[again.loaded.model].values())).directory
    assert directory.parent == cache_dir() / "runtime-export"
    manifest = json.loads((directory / onnx_export.MANIFEST).read_text())
    assert manifest["covers"]["layers"] == [1, 2] and manifest["covers"]["runtime"]["name"] == "openvino"

    onnx_file = directory / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the weights
    onnx_file.write_bytes(bytes(data))
    rebuilt = make(tiny_gpt2_shared, "openvino", **config)
    with caplog.at_level("WARNING"):
        np.testing.assert_allclose(rebuilt.embed(TEXTS)["embedding_l1_last"], first["embedding_l1_last"], rtol=1e-5)
    assert len(exports) == 1
    assert "not usable" in caplog.text
    (directory / onnx_export.MANIFEST).unlink()  # an entry without its manifest is rebuilt too
    make(tiny_gpt2_shared, "openvino", **config).embed(TEXTS[:2])
    assert len(exports) == 2


@needs("openvino")
def test_a_random_twin_never_shares_the_export_of_its_model(tiny_gpt2_shared):
    from embedkit.audit.control import random_twin

    ex = make(tiny_gpt2_shared, "openvino", layers=(-1,), pooling=("mean",))
    twin = random_twin(ex)
    a, b = ex.embed(TEXTS[:4]), twin.embed(TEXTS[:4])
    assert cosines(a, b).max() < 0.999
    assert onnx_export.weights_digest(ex.loaded.model) != onnx_export.weights_digest(twin.loaded.model)


def test_a_missing_runtime_names_the_extra(tiny_gpt2_shared, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs openvino.*pip install 'embedkit\[openvino\]'"):
        make(tiny_gpt2_shared, "openvino")
    # the default backend never needs a runtime
    assert make(tiny_gpt2_shared, "torch", layers=(-1,), pooling=("mean",)).embed(["ok"]).shape == (1, 32)


def test_runtime_backends_refuse_cuda(tiny_gpt2_shared):
    import torch
    from transformers import AutoModel

    from embedkit.extract.backends import prepare

    model = AutoModel.from_pretrained(tiny_gpt2_shared)
    with pytest.raises(ConfigError, match="runs on CPU only"):
        prepare(model, "openvino", torch.device("cuda"))


@needs("openvino")
def test_cli_embed_backend_openvino_is_recorded_and_reused_by_search(
    tiny_gpt2_shared, write_csv, tmp_path, monkeypatch
):
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from embedkit.cli import cli

    src = write_csv([{"text": t} for t in TEXTS[:6]])
    out = tmp_path / "ov.parquet"
    args = ["embed", str(src), "-o", str(out), "--model", tiny_gpt2_shared, "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(cli, [*args, "--backend", "openvino"])
    assert result.exit_code == 0, result.output
    assert '"backend": "openvino"' in json.dumps(json.loads(pq.read_schema(out).metadata[b"embedkit"]))
    index = tmp_path / "idx"
    result = CliRunner().invoke(cli, ["index", "build", str(out), "-o", str(index), "--metric", "cosine", "--quiet"])
    assert result.exit_code == 0, result.output
    # search re-embeds the query with the backend stored in the index: a text of the set finds itself first
    from embedkit.extract import extractor

    used = []
    real = extractor.runner_for
    monkeypatch.setattr(extractor, "runner_for", lambda *a, **k: (used.append(a[2]), real(*a, **k))[1])
    result = CliRunner().invoke(cli, ["search", str(index), TEXTS[3], "-k", "1", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    (hit,) = json.loads(result.stdout)["hits"]
    assert hit["score"] >= 0.99999, hit
    assert used == ["openvino"]
