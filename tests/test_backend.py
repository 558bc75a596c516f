"""Backends: the exact rewrites keep the reference vectors; int8 is close to them and says so in its config."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import sample_texts
from transformers import AutoModel

from embedkit import ConfigError, ExtractConfig, Extractor
from embedkit.config import BACKENDS
from embedkit.extract import backends, kernel_choice
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
    with pytest.raises(
        ConfigError, match="unknown backend 'onnx-gpu'; valid: torch, int8, bf16, openvino, ort-int8, auto"
    ):
        ExtractConfig(model="x", backend="onnx-gpu")
    assert BACKENDS == ("torch", "int8", "bf16", "openvino", "ort-int8", "auto")


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


@pytest.fixture(autouse=True)
def own_cache_dir(tmp_path, monkeypatch):
    """Every test here gets an empty kernel-choice cache: never the user's, never another test's answer."""
    monkeypatch.setenv("EMBEDKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.skipif(not backends._onednn_usable(), reason="this torch build has no oneDNN linear ops")
def test_extractor_vectors_are_the_same_with_or_without_onednn(tiny_gpt2_shared, monkeypatch, own_cache_dir):
    config = ExtractConfig(model=tiny_gpt2_shared, layers=(0, 1, -1), pooling=("mean", "last", "max", "weighted-mean"))
    monkeypatch.setattr(backends, "PACK_AFTER_TOKENS", 1)
    monkeypatch.setattr(backends, "onednn_is_faster", lambda linear, tokens=512: False)
    plain = Extractor(config, batch_tokens=256)
    want = plain.embed(TEXTS)
    monkeypatch.setenv("EMBEDKIT_CACHE_DIR", str(own_cache_dir / "other"))  # the first answer is cached
    monkeypatch.setattr(backends, "onednn_is_faster", lambda linear, tokens=512: True)
    fast = Extractor(config, batch_tokens=256)
    got = fast.embed(TEXTS)
    assert any(isinstance(m, backends.OneDNNLinear) for m in fast.loaded.model.modules())
    assert not any(isinstance(m, backends.OneDNNLinear) for m in plain.loaded.model.modules())
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


# ------------------------------------------------------------------ the kernel choice: late, cached, never trusted


class CountingSpeedTest:
    """Stands in for backends.onednn_is_faster: counts the measurements, answers as told."""

    def __init__(self, answer: bool = True):
        self.calls, self.answer = 0, answer

    def __call__(self, linear, tokens=512):
        self.calls += 1
        return self.answer


@pytest.fixture
def speed_test(monkeypatch):
    monkeypatch.setattr(backends, "_onednn_usable", lambda: True)
    counter = CountingSpeedTest(answer=False)  # "default": nothing is packed, so no oneDNN op is needed
    monkeypatch.setattr(backends, "onednn_is_faster", counter)
    return counter


def fresh_model(path):
    return prepare(AutoModel.from_pretrained(path).eval(), "torch", torch.device("cpu"))


def test_a_small_job_neither_measures_nor_packs(tiny_gpt2_shared, speed_test, own_cache_dir):
    model = fresh_model(tiny_gpt2_shared)
    assert backends.speed_up(model, torch.device("cpu"), 20) is False
    assert speed_test.calls == 0
    assert not own_cache_dir.exists()


def test_the_choice_is_measured_once_then_read_from_the_cache(tiny_gpt2_shared, speed_test, own_cache_dir):
    cpu = torch.device("cpu")
    backends.speed_up(fresh_model(tiny_gpt2_shared), cpu, backends.PACK_AFTER_TOKENS)
    assert speed_test.calls == 1
    stored = json.loads((own_cache_dir / kernel_choice.CACHE_FILE).read_text())
    assert [e["choice"] for e in stored["entries"].values()] == ["default"]
    for _ in range(3):  # new processes would load the model again: each is a new module with the same shape
        backends.speed_up(fresh_model(tiny_gpt2_shared), cpu, backends.PACK_AFTER_TOKENS)
    assert speed_test.calls == 1


def test_the_running_total_decides_and_the_choice_is_made_once_per_model(tiny_gpt2_shared, speed_test):
    model, cpu = fresh_model(tiny_gpt2_shared), torch.device("cpu")
    backends.speed_up(model, cpu, backends.PACK_AFTER_TOKENS - 1)
    assert speed_test.calls == 0
    backends.speed_up(model, cpu, 1)
    backends.speed_up(model, cpu, 10_000)
    assert speed_test.calls == 1


def test_a_cached_onednn_choice_packs_without_measuring(tiny_gpt2_shared, monkeypatch, speed_test):
    model = fresh_model(tiny_gpt2_shared)
    first = next(m for m in model.modules() if backends._packable(m))
    key, covers = kernel_choice.choice_key(backends.model_shape(model, backends._as_linear(first)))
    kernel_choice.remember(key, covers, "onednn")
    monkeypatch.setattr(backends, "use_onednn_linears", lambda m: 48)  # the packing itself is tested above
    assert backends.speed_up(model, torch.device("cpu"), backends.PACK_AFTER_TOKENS) is True
    assert speed_test.calls == 0


def test_another_model_shape_is_measured_again(tiny_gpt2_shared, tiny_bert, speed_test):
    cpu = torch.device("cpu")
    backends.speed_up(fresh_model(tiny_gpt2_shared), cpu, backends.PACK_AFTER_TOKENS)
    backends.speed_up(fresh_model(tiny_bert), cpu, backends.PACK_AFTER_TOKENS)
    assert speed_test.calls == 2
    backends.speed_up(fresh_model(tiny_bert), cpu, backends.PACK_AFTER_TOKENS)
    assert speed_test.calls == 2


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe garbage",
        b"[]",
        b'{"format": 1, "entries": []}',
        b'{"format": 99, "entries": {}}',
        "KEY_CHOICE:os.system",
        "KEY_CHOICE:int8",
        "KEY_ENTRY:[1, 2]",
        'KEY_ENTRY:{"choice": true}',
        'KEY_ENTRY:{"choice": ["onednn"]}',
        'KEY_ENTRY:"onednn"',
    ],
)
def test_a_bad_cache_file_is_ignored_and_measured_again(tiny_gpt2_shared, speed_test, own_cache_dir, content):
    model = fresh_model(tiny_gpt2_shared)
    first = next(m for m in model.modules() if backends._packable(m))
    key, _ = kernel_choice.choice_key(backends.model_shape(model, backends._as_linear(first)))
    if isinstance(content, str):  # a well-formed file whose entry for this very model is wrong
        kind, _, value = content.partition(":")
        entry = {"choice": value} if kind == "KEY_CHOICE" else json.loads(value)
        content = json.dumps({"format": 1, "entries": {key: entry}}).encode()
    own_cache_dir.mkdir(parents=True)
    (own_cache_dir / kernel_choice.CACHE_FILE).write_bytes(content)
    assert backends.speed_up(model, torch.device("cpu"), backends.PACK_AFTER_TOKENS) is False
    assert speed_test.calls == 1
    stored = json.loads((own_cache_dir / kernel_choice.CACHE_FILE).read_text())  # rewritten, well-formed
    assert stored["entries"][key]["choice"] == "default"


def test_an_unwritable_cache_dir_costs_only_the_measurement(tiny_gpt2_shared, speed_test, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("EMBEDKIT_CACHE_DIR", str(blocker / "cache"))
    cpu = torch.device("cpu")
    for _ in range(2):
        assert backends.speed_up(fresh_model(tiny_gpt2_shared), cpu, backends.PACK_AFTER_TOKENS) is False
    assert speed_test.calls == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_cache_dir_costs_only_the_measurement(tiny_gpt2_shared, speed_test, own_cache_dir):
    own_cache_dir.mkdir(parents=True)
    own_cache_dir.chmod(0o500)
    try:
        backends.speed_up(fresh_model(tiny_gpt2_shared), torch.device("cpu"), backends.PACK_AFTER_TOKENS)
    finally:
        own_cache_dir.chmod(0o700)
    assert speed_test.calls == 1


def test_the_cache_keeps_a_bounded_number_of_entries(own_cache_dir):
    for i in range(kernel_choice.MAX_ENTRIES + 5):
        kernel_choice.remember(f"key{i}", {"i": i}, "default")
    entries = json.loads((own_cache_dir / kernel_choice.CACHE_FILE).read_text())["entries"]
    assert (
        len(entries) == kernel_choice.MAX_ENTRIES
        and "key0" not in entries
        and kernel_choice.lookup(f"key{kernel_choice.MAX_ENTRIES + 4}")
    )


def test_the_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("EMBEDKIT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert kernel_choice.cache_dir() == tmp_path / "xdg" / "embedkit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert kernel_choice.cache_dir() == tmp_path / "home" / ".cache" / "embedkit"


def test_the_key_covers_machine_torch_threads_and_shape():
    shape = {"model_type": "gpt2", "layers": 12, "width": 768, "heads": 12, "dtype": "float32"}
    key, covers = kernel_choice.choice_key(shape)
    assert {"cpu", "flags", "machine", "torch", "threads", "candidates", "shape"} <= set(covers)
    assert kernel_choice.choice_key({**shape, "width": 1024})[0] != key
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        assert kernel_choice.choice_key(shape)[0] != key
    finally:
        torch.set_num_threads(threads)


def test_int8_models_have_no_kernel_choice_to_make(tiny_gpt2_shared, speed_test):
    model = prepare(AutoModel.from_pretrained(tiny_gpt2_shared).eval(), "int8", torch.device("cpu"))
    assert backends.speed_up(model, torch.device("cpu"), 10**6) is False
    assert speed_test.calls == 0


def test_the_speed_test_leaves_the_global_rng_alone():
    linear = torch.nn.Linear(16, 16)
    torch.manual_seed(5)
    want = torch.rand(3)
    torch.manual_seed(5)
    backends.onednn_is_faster(linear, tokens=8)
    assert torch.equal(torch.rand(3), want)


def test_a_one_query_embed_does_not_measure(tiny_gpt2_shared, speed_test):
    ex = Extractor(ExtractConfig(model=tiny_gpt2_shared), device="cpu")
    ex.embed(["one short query"])
    assert speed_test.calls == 0
    ex.embed(TEXTS * 10)
    assert speed_test.calls == 1


def test_a_tiny_job_runs_on_one_thread_and_the_count_is_put_back(monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.append(n))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    cpu = torch.device("cpu")
    with backends.threads_for(cpu, backends.ONE_THREAD_TOKENS):
        assert seen == [1]
    assert seen == [1, 4]
    with backends.threads_for(cpu, backends.ONE_THREAD_TOKENS + 1):
        pass
    with backends.threads_for(torch.device("cuda"), 3):
        pass
    assert seen == [1, 4]
    with pytest.raises(RuntimeError), backends.threads_for(cpu, 1):
        raise RuntimeError("a failing job")
    assert seen == [1, 4, 1, 4]
