"""The extractor equals a one-text-at-a-time reference, whatever the batching, and gets GPT-2's pitfalls right."""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import sample_texts
from transformers import AutoModel, AutoTokenizer

from embedkit import ConfigError, ExtractConfig, Extractor, InputError
from embedkit.config import POOLING_MODES

TOL = 1e-5


_HIDDEN_CACHE: dict = {}


def reference_states(model, tokenizer, text: str, max_length: int = 1024):
    """One text, no padding, ``output_hidden_states``: the definition of right (cached per model and text)."""
    key = (id(model), text, max_length)
    if key not in _HIDDEN_CACHE:
        ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)
        with torch.no_grad():
            _HIDDEN_CACHE[key] = [h[0] for h in model(**ids, output_hidden_states=True).hidden_states]
    return _HIDDEN_CACHE[key]


def reference_vector(model, tokenizer, text: str, layer: int, pooling: str, max_length: int = 1024) -> np.ndarray:
    """Pooling by hand over the reference hidden states of one text."""
    h = reference_states(model, tokenizer, text, max_length)[layer]
    positions = torch.arange(1, h.shape[0] + 1, dtype=torch.float32)[:, None]
    return {
        "mean": h.mean(0),
        "last": h[-1],
        "max": h.max(0).values,
        "first": h[0],
        "weighted-mean": (h * positions).sum(0) / positions.sum(),
    }[pooling].numpy()


@pytest.fixture(scope="module")
def reference_model(tiny_gpt2_shared):
    return AutoModel.from_pretrained(tiny_gpt2_shared).eval(), AutoTokenizer.from_pretrained(tiny_gpt2_shared)


TEXTS = sample_texts(23, seed=7, max_words=60) + ["x", "A much longer text. " * 40, "Émoji 😀 and 漢字 and שלום."]


@pytest.mark.parametrize("batch_tokens", [1, 37, 256, 100_000])
@pytest.mark.parametrize("layers", [(0,), (1,), (-1,), (2, 0, 1)])
def test_equals_reference_for_every_pooling(extractor_factory, reference_model, batch_tokens, layers):
    model, tokenizer = reference_model
    ex = extractor_factory(batch_tokens=batch_tokens, layers=layers, pooling=POOLING_MODES)
    got = ex.embed(TEXTS)
    for (layer, pooling), column in zip(ex.config.pairs, ex.columns):
        ref = np.stack([reference_vector(model, tokenizer, t, layer, pooling) for t in TEXTS])
        assert np.abs(got[column] - ref).max() <= TOL, (layer, pooling)


def test_order_is_restored_whatever_the_input_order(extractor_factory):
    ex = extractor_factory(batch_tokens=64, pooling=("mean", "last"))
    base = ex.embed(TEXTS)
    order = list(range(len(TEXTS)))
    random.Random(3).shuffle(order)
    shuffled = ex.embed([TEXTS[i] for i in order])
    for column in base:
        np.testing.assert_allclose(shuffled[column], base[column][order], atol=TOL, rtol=0)


def test_negative_layers_resolve_to_absolute_indices(extractor_factory):
    ex = extractor_factory(layers=(-1, -3))
    assert ex.config.layers == (2, 0)
    assert ex.columns == ["embedding_l2_mean", "embedding_l0_mean"]


def _count_blocks(ex):
    runs = []
    handles = [b.register_forward_hook(lambda m, a, o, i=i: runs.append(i)) for i, b in enumerate(ex.loaded.blocks)]
    final_norm = []
    handles.append(ex.loaded.model.ln_f.register_forward_hook(lambda *a: final_norm.append(1)))
    return runs, final_norm, handles


@pytest.mark.parametrize(
    "layers, blocks_run, final_norm_runs", [((0,), [], False), ((1,), [0], False), ((-1,), [0, 1], True)]
)
def test_only_blocks_up_to_the_deepest_requested_layer_run(extractor_factory, layers, blocks_run, final_norm_runs):
    ex = extractor_factory(layers=layers, batch_tokens=100_000)
    runs, final_norm, handles = _count_blocks(ex)
    try:
        ex.embed(["one short text"])
    finally:
        for h in handles:
            h.remove()
    assert runs == blocks_run
    assert bool(final_norm) == final_norm_runs


def test_several_layers_and_poolings_come_from_one_forward_pass(extractor_factory):
    ex = extractor_factory(layers=(0, 1, 2), pooling=POOLING_MODES, batch_tokens=100_000)
    calls = []
    handle = ex.loaded.model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        out = ex.embed(sample_texts(5))
    finally:
        handle.remove()
    assert len(out) == 15 and len(calls) == 1


def test_callers_tokenizer_is_not_given_a_pad_token(extractor_factory):
    ex = extractor_factory()
    ex.embed(["pad me", "a longer text to force padding in the batch"])
    assert ex.loaded.tokenizer.pad_token is None


def test_truncation_is_recorded(extractor_factory, reference_model):
    model, tokenizer = reference_model
    ex = extractor_factory(max_length=16, pooling=("mean", "last"))
    text = "The cat and the dog " * 10
    result = ex.encode([text, "short"])
    assert result.truncated.tolist() == [True, False]
    assert result.n_tokens[0] == len(tokenizer(text)["input_ids"]) > 16
    ref = reference_vector(model, tokenizer, text, 2, "mean", max_length=16)
    assert np.abs(result.vectors["embedding_l2_mean"][0] - ref).max() <= TOL


def test_chunked_long_text_is_the_token_weighted_mean_of_its_windows(extractor_factory, reference_model):
    model, tokenizer = reference_model
    ex = extractor_factory(max_length=16, stride=4, long_text="chunk", pooling=("mean", "max", "last", "first"))
    text = " ".join(sample_texts(8, seed=11))
    ids = tokenizer(text)["input_ids"]
    windows = []
    for start in range(0, len(ids), 12):
        windows.append(ids[start : start + 16])
        if start + 16 >= len(ids):
            break
    with torch.no_grad():
        hs = [model(input_ids=torch.tensor([w]), output_hidden_states=True).hidden_states[2][0] for w in windows]
    lengths = torch.tensor([len(w) for w in windows], dtype=torch.float32)
    expected = {
        "mean": (torch.stack([h.mean(0) for h in hs]) * lengths[:, None]).sum(0) / lengths.sum(),
        "max": torch.stack([h.max(0).values for h in hs]).max(0).values,
        "last": hs[-1][-1],
        "first": hs[0][0],
    }
    result = ex.encode([text])
    assert result.n_windows[0] == len(windows) > 2 and not result.truncated[0]
    for pooling, vector in expected.items():
        assert np.abs(result.vectors[f"embedding_l2_{pooling}"][0] - vector.numpy()).max() <= TOL


def test_texts_over_1024_tokens_never_fail(extractor_factory):
    text = "word " * 3000
    truncated = extractor_factory().encode([text])
    chunked = extractor_factory(long_text="chunk").encode([text])
    assert truncated.truncated[0] and truncated.n_windows[0] == 1 and truncated.n_tokens[0] > 1024
    assert not chunked.truncated[0] and chunked.n_windows[0] >= 3
    assert np.isfinite(chunked.vectors["embedding"]).all()


def test_bad_values_are_recorded_not_raised(extractor_factory):
    values = [
        "fine",
        "",
        "   \n",
        None,
        float("nan"),
        42,
        ["a"],
        "bad \udcff byte",
        "lone \ud800 surrogate",
        "nul\x00 and \x07",
    ]
    result = extractor_factory().encode(values)
    assert result.status == [
        "ok",
        "empty",
        "empty",
        "null",
        "null",
        "not_string",
        "not_string",
        "repaired",
        "repaired",
        "ok",
    ]
    assert result.valid.tolist() == [s in ("ok", "repaired") for s in result.status]
    assert np.isnan(result.vectors["embedding"][~result.valid]).all()
    assert np.isfinite(result.vectors["embedding"][result.valid]).all()
    assert all(result.error[i] for i in np.flatnonzero(~result.valid))


def test_embed_raises_a_clear_error_on_bad_texts(extractor_factory):
    with pytest.raises(InputError, match="at index 1, is empty"):
        extractor_factory().embed(["ok", ""])
    with pytest.raises(InputError, match="not a single string"):
        extractor_factory().embed("a string")


def test_normalize_gives_unit_vectors(extractor_factory):
    out = extractor_factory(normalize=True).embed(sample_texts(4))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_empty_input_list(extractor_factory):
    assert extractor_factory().embed([]).shape == (0, 32)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"pooling": ("average",)}, "unknown pooling 'average'; valid: mean, last, max, first, weighted-mean"),
        ({"long_text": "split"}, "valid: truncate, chunk"),
        ({"dtype": "int4"}, "valid: float32, float16, int8, binary"),  # int8, binary: issue 22
        ({"layers": ()}, "at least one layer"),
    ],
)
def test_invalid_settings_name_the_valid_ones(config, message):
    with pytest.raises(ConfigError, match=message):
        ExtractConfig(model="m", **config)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"layers": (3,)}, r"layer 3 is out of range .* use 0..2 or -3..-1"),
        ({"layers": (2, -1)}, "same layer twice"),
        ({"max_length": 4096}, "exceeds the model's limit of 1024"),
    ],
)
def test_settings_checked_against_the_model(tiny_gpt2_shared, config, message):
    with pytest.raises(ConfigError, match=message):
        Extractor(ExtractConfig(model=tiny_gpt2_shared, **config), device="cpu")


def test_config_round_trips_through_a_dict():
    config = ExtractConfig(model="m", layers=[6, -1], pooling="last", long_text="chunk", stride=10, max_length=64)
    assert ExtractConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown extraction setting"):
        ExtractConfig.from_dict({**config.to_dict(), "colour": "red"})


def test_any_automodel_works_bert_with_special_tokens(tiny_bert):
    ex = Extractor(
        ExtractConfig(model=tiny_bert, layers=(1, -1), pooling=("first", "mean")), device="cpu", batch_tokens=50
    )
    model, tokenizer = AutoModel.from_pretrained(tiny_bert).eval(), AutoTokenizer.from_pretrained(tiny_bert)
    texts = ["the cat", "the dog and the bird in the tree", "music"]
    got = ex.embed(texts)
    for (layer, pooling), column in zip(ex.config.pairs, ex.columns):
        ref = np.stack([reference_vector(model, tokenizer, t, layer, pooling, max_length=64) for t in texts])
        assert np.abs(got[column] - ref).max() <= TOL
    # Windows keep [CLS] ... [SEP] each, so max_length counts them.
    result = ex.encode(["the cat " * 100])
    assert result.truncated[0] and result.n_tokens[0] == 202


def test_missing_model_directory_is_a_clear_error(tmp_path):
    from embedkit import ModelLoadError

    with pytest.raises(ModelLoadError, match="does not exist"):
        Extractor(ExtractConfig(model=str(tmp_path / "nope" / "model")), device="cpu")


def test_hub_id_offline_without_cache_says_how_to_point_at_a_directory(monkeypatch, tmp_path):
    from embedkit import ModelLoadError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelLoadError, match=r"Point --model \(or \$EMBEDKIT_MODEL\) at a local directory"):
        Extractor(ExtractConfig(model="openai-community/gpt2"), device="cpu")


@pytest.fixture
def unreachable_hub(monkeypatch, tmp_path):
    """A hub that refuses connections at once (discard port on localhost) and an empty cache under tmp_path."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def _cache_as_hub_model(model_dir: str, cache: Path, repo: str) -> None:
    # The layout huggingface_hub leaves after a download: refs/main names a snapshot holding the files.
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / "0123abc"
    shutil.copytree(model_dir, snapshot)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("0123abc")


# Without the reachability probe, huggingface_hub retries each file five times with back-off (~25 s per file)
# before giving up or falling back to the cache; the time limits below are far under that.
def test_hub_id_without_network_or_cache_fails_at_once_with_the_message(unreachable_hub):
    from embedkit import ModelLoadError

    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match=r"Point --model \(or \$EMBEDKIT_MODEL\) at a local directory"):
        Extractor(ExtractConfig(model="openai-community/gpt2"), device="cpu")
    assert time.perf_counter() - started < 10


def test_cached_hub_id_loads_at_once_without_network(unreachable_hub, tiny_gpt2_shared):
    _cache_as_hub_model(tiny_gpt2_shared, unreachable_hub, "openai-community/gpt2")
    started = time.perf_counter()
    cached = Extractor(ExtractConfig(model="openai-community/gpt2"), device="cpu").embed(["a cached model"])
    assert time.perf_counter() - started < 10
    local = Extractor(ExtractConfig(model=tiny_gpt2_shared), device="cpu").embed(["a cached model"])
    np.testing.assert_allclose(cached, local, atol=1e-6)


def test_encode_tokens_of_separately_tokenised_texts_equals_encode(extractor_factory):
    ex = extractor_factory(batch_tokens=64, long_text="chunk", max_length=24)
    texts = sample_texts(12, seed=5, max_words=30)
    _, first = ex.tokenize(texts[:5])
    _, second = ex.tokenize(texts[5:])
    merged = ex.encode_tokens(first + second)
    whole = ex.encode(texts)
    np.testing.assert_array_equal(merged.vectors["embedding"], whole.vectors["embedding"])
    np.testing.assert_array_equal(merged.n_tokens, whole.n_tokens)


def test_encode_tokens_records_empty_rows_and_refuses_ids_outside_the_vocabulary(extractor_factory):
    ex = extractor_factory()
    result = ex.encode_tokens([[5, 6], [], None])
    assert result.status == ["ok", "empty", "null"] and result.valid.tolist() == [True, False, False]
    with pytest.raises(InputError, match="must lie in 0.."):
        ex.encode_tokens([[ex.vocab_size]])
