"""Backends: the exact rewrites keep the reference vectors; int8 is close to them and says so in its config."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import sample_texts
from transformers import AutoModel

from embedkit import ConfigError, ExtractConfig, Extractor
from embedkit.config import BACKENDS
from embedkit.extract import backends
from embedkit.extract.backends import conv1d_to_linear, fuse_activations, prepare

TEXTS = sample_texts(30, seed=11, max_words=80)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_fused_activation_and_linear_rewrite_keep_the_outputs(tiny_gpt2_shared):
    original = AutoModel.from_pretrained(tiny_gpt2_shared).eval()
    rewritten = AutoModel.from_pretrained(tiny_gpt2_shared).eval()
    assert fuse_activations(rewritten) == 2  # one MLP activation per block
    assert conv1d_to_linear(rewritten) == 8  # c_attn, c_proj, c_fc, mlp.c_proj per block
    ids = torch.randint(0, original.config.vocab_size, (3, 50))
    with torch.no_grad():
        want = original(input_ids=ids).last_hidden_state
        got = rewritten(input_ids=ids).last_hidden_state
    assert (got - want).abs().max().item() <= 1e-5


def test_int8_is_close_to_torch_and_recorded(extractor_factory):
    exact = extractor_factory(pooling=("mean", "last"))
    approx = extractor_factory(pooling=("mean", "last"), backend="int8")
    assert approx.config.backend == "int8"
    assert approx.config.to_dict()["backend"] == "int8"
    assert approx.config.vector_settings() != exact.config.vector_settings()
    a, b = exact.embed(TEXTS), approx.embed(TEXTS)
    for column in exact.columns:
        assert cosines(a[column], b[column]).min() >= 0.99, column
    assert any(
        type(m).__name__ == "Linear" and "quantized" in type(m).__module__ for m in approx.loaded.model.modules()
    )


def test_int8_keeps_order_and_layers(extractor_factory):
    # Dynamic quantisation scales activations per batch, so a row's vector moves slightly with its batch
    # mates: rows are compared by cosine, not to 1e-5.
    approx = extractor_factory(backend="int8", layers=(1, -1))
    forward, backward = approx.embed(TEXTS), approx.embed(TEXTS[::-1])
    for column in approx.columns:
        assert cosines(forward[column][::-1], backward[column]).min() >= 0.999, column


def test_unknown_backend_names_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown backend 'onnx-gpu'; valid: torch, int8"):
        ExtractConfig(model="x", backend="onnx-gpu")
    assert BACKENDS == ("torch", "int8")


def test_int8_refuses_cuda(tiny_gpt2_shared):
    model = AutoModel.from_pretrained(tiny_gpt2_shared).eval()
    with pytest.raises(ConfigError, match="CPU only"):
        prepare(model, "int8", torch.device("cuda"))


def test_old_metadata_without_backend_reads_as_torch(tiny_gpt2_shared):
    stored = ExtractConfig(model=tiny_gpt2_shared).to_dict()
    del stored["backend"]
    assert ExtractConfig.from_dict(stored).backend == "torch"


def test_extractor_accepts_int8_by_config(tiny_gpt2_shared):
    ex = Extractor(ExtractConfig(model=tiny_gpt2_shared, backend="int8"), device="cpu")
    assert ex.embed(["one text"]).shape == (1, ex.dim)


def test_cli_embed_backend_int8_is_recorded_in_metadata(tiny_gpt2_shared, write_csv, tmp_path):
    import json

    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from embedkit.cli import cli

    src = write_csv([{"text": t} for t in TEXTS[:5]])
    out = tmp_path / "int8.parquet"
    result = CliRunner().invoke(
        cli,
        [
            "embed",
            str(src),
            "-o",
            str(out),
            "--model",
            tiny_gpt2_shared,
            "--backend",
            "int8",
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert '"backend": "int8"' in json.dumps(json.loads(pq.read_schema(out).metadata[b"embedkit"]))


def test_cli_embed_rejects_an_unknown_backend(tiny_gpt2_shared, write_csv, tmp_path):
    from click.testing import CliRunner

    from embedkit.cli import cli

    src = write_csv([{"text": "a"}])
    result = CliRunner().invoke(cli, ["embed", str(src), "-o", str(tmp_path / "x.parquet"), "--backend", "onnx"])
    assert result.exit_code == 2
    assert "torch" in result.output and "int8" in result.output


@pytest.mark.skipif(not backends._onednn_usable(), reason="this torch build has no oneDNN linear ops")
@pytest.mark.parametrize("which", ["tiny_gpt2_shared", "tiny_bert"])
def test_onednn_linears_keep_the_outputs(which, request):
    path = request.getfixturevalue(which)
    original = AutoModel.from_pretrained(path).eval()
    rewritten = AutoModel.from_pretrained(path).eval()
    assert backends.use_onednn_linears(rewritten) > 0
    assert not any(isinstance(m, torch.nn.Linear) for m in rewritten.modules())
    ids = torch.randint(0, original.config.vocab_size, (3, 40))
    mask = torch.ones_like(ids)
    mask[1, 25:] = 0
    with torch.inference_mode():
        want = original(input_ids=ids, attention_mask=mask).last_hidden_state
        got = rewritten(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (got - want).abs().max().item() <= 1e-5


@pytest.mark.skipif(not backends._onednn_usable(), reason="this torch build has no oneDNN linear ops")
def test_extractor_vectors_are_the_same_with_or_without_onednn(tiny_gpt2_shared, monkeypatch):
    config = ExtractConfig(model=tiny_gpt2_shared, layers=(0, 1, -1), pooling=("mean", "last", "max", "weighted-mean"))
    monkeypatch.setattr(backends, "onednn_is_faster", lambda linear, tokens=512: False)
    plain = Extractor(config, batch_tokens=256)
    monkeypatch.setattr(backends, "onednn_is_faster", lambda linear, tokens=512: True)
    fast = Extractor(config, batch_tokens=256)
    assert any(isinstance(m, backends.OneDNNLinear) for m in fast.loaded.model.modules())
    assert not any(isinstance(m, backends.OneDNNLinear) for m in plain.loaded.model.modules())
    want, got = plain.embed(TEXTS), fast.embed(TEXTS)
    for name in want:
        assert np.abs(got[name] - want[name]).max() <= 1e-5, name


def test_onednn_is_not_used_where_it_cannot_run(monkeypatch):
    monkeypatch.setattr(backends, "_onednn_usable", lambda: False)
    assert backends.onednn_is_faster(torch.nn.Linear(8, 8)) is False


def test_onednn_is_timed_on_the_models_own_layer():
    # Whatever the machine decides, the decision is a bool and the layer it timed is left untouched.
    linear = torch.nn.Linear(64, 256)
    before = linear.weight.detach().clone()
    assert backends.onednn_is_faster(linear, tokens=64) in (True, False)
    assert torch.equal(linear.weight, before)
