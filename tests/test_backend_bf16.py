"""Backend bf16 (#21): bf16 linear layers close to fp32 where the CPU has native bf16; fp32 and a message elsewhere.

The flag detection is monkeypatched both ways, so the bf16 path runs (emulated, slower) on any CPU and the
fallback is seen on any CPU too.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from conftest import sample_texts

from embedkit.extract import bf16

TEXTS = sample_texts(20, seed=21, max_words=80)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture
def native(monkeypatch):
    def set_flags(*flags: str) -> None:
        monkeypatch.setattr(bf16, "cpu_flags", lambda: frozenset(("sse2", "avx2") + flags))

    return set_flags


def test_flag_detection_reads_the_native_flags(native):
    native()
    assert not bf16.native_bf16()
    native("avx512_bf16")
    assert bf16.native_bf16()
    native("amx_bf16", "amx_tile")
    assert bf16.native_bf16()


def test_bf16_is_close_to_fp32_and_recorded(extractor_factory, native):
    native("avx512_bf16")
    exact = extractor_factory(pooling=("mean", "last"), layers=(1, -1))
    half = extractor_factory(pooling=("mean", "last"), layers=(1, -1), backend="bf16")
    assert half.config.backend == "bf16"
    assert half.config.to_dict()["backend"] == "bf16"
    assert half.config.vector_settings() != exact.config.vector_settings()
    linears = [m for m in half.loaded.model.modules() if isinstance(m, bf16.BF16Linear)]
    assert len(linears) == 8  # c_attn, c_proj, c_fc, mlp.c_proj per block
    assert all(m.weight.dtype == torch.bfloat16 for m in linears)
    a, b = exact.embed(TEXTS), half.embed(TEXTS)
    for column in exact.columns:
        assert b[column].dtype == np.float32
        # bf16 keeps 8 bits of mantissa (relative error ~4e-3 per product), the fp32 residual stream keeps it from
        # compounding: the bar on GPT-2 small is 0.9999; a 2-block, 32-wide model is held to the same.
        assert cosines(a[column], b[column]).min() >= 0.9999, column
        assert not np.array_equal(a[column], b[column])  # it really ran in bf16


def test_bf16_linear_matches_conv1d_and_linear():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = Conv1D(24, 16)  # weight [in=16, out=24]
    lin = torch.nn.Linear(16, 24)
    x = torch.randn(3, 5, 16)
    for module in (conv, lin):
        with torch.no_grad():
            want, got = module(x), bf16.BF16Linear(module)(x)
        assert got.dtype == torch.float32 and got.shape == want.shape
        assert torch.allclose(got, want, rtol=2e-2, atol=2e-2)


def test_without_native_bf16_it_says_so_and_runs_fp32(extractor_factory, native, caplog):
    native()
    exact = extractor_factory()
    with caplog.at_level(logging.WARNING, logger="embedkit.extract.bf16"):
        fallback = extractor_factory(backend="bf16")
    assert "no native bfloat16" in caplog.text and "fp32 path" in caplog.text
    assert fallback.config.backend == "bf16"  # recorded as asked: queries re-embed with the same setting
    assert not any(isinstance(m, bf16.BF16Linear) for m in fallback.loaded.model.modules())
    np.testing.assert_allclose(fallback.embed(TEXTS), exact.embed(TEXTS), rtol=1e-4, atol=1e-5)


def test_cuda_is_left_to_the_extractors_autocast(tiny_gpt2_shared):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_gpt2_shared).eval()
    assert bf16.to_bf16(model, torch.device("cuda")) is model
    assert not any(isinstance(m, bf16.BF16Linear) for m in model.modules())


def test_cli_embed_backend_bf16_is_recorded_in_metadata(tiny_gpt2_shared, write_csv, tmp_path, native):
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from embedkit.cli import cli

    native("amx_bf16")
    src = write_csv([{"text": t} for t in TEXTS[:5]])
    out = tmp_path / "bf16.parquet"
    args = ["embed", str(src), "-o", str(out), "--model", tiny_gpt2_shared, "--backend", "bf16", "--device", "cpu"]
    result = CliRunner().invoke(cli, [*args, "--quiet"])
    assert result.exit_code == 0, result.output
    assert '"backend": "bf16"' in json.dumps(json.loads(pq.read_schema(out).metadata[b"embedkit"]))
