"""Backends auto and bf16 choose their engine by a measurement cached per machine and model shape (#21).

auto picks torch or OpenVINO fp32 (never an approximate engine) and records the one it ran on; bf16 on a CPU with
native bf16 (monkeypatched here: this CPU has none) picks torch's bf16 linear layers or OpenVINO bf16 and stays
recorded as bf16. Small jobs never measure nor export. The measurement itself runs for real on the tiny GPT-2.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from conftest import sample_texts

from embedkit import ExtractConfig, Extractor
from embedkit.extract import backend_choice, bf16, kernel_choice, onnx_export, runtime_backends

TEXTS = sample_texts(16, seed=5, max_words=60)
HAS_OPENVINO = all(importlib.util.find_spec(p) is not None for p in ("openvino", "onnx"))
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="openvino not installed (pip install embedkit[openvino])")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh choice cache, a measurement small enough for the tiny model, and a count of measurements."""
    monkeypatch.setenv("EMBEDKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(backend_choice, "MEASURE_TOKENS", 256)
    monkeypatch.setattr(backend_choice, "ROUNDS", 1)
    calls: list[tuple[str, ...]] = []
    real = backend_choice.measure

    def counting(extractor, engines):
        calls.append(engines)
        return real(extractor, engines)

    monkeypatch.setattr(backend_choice, "measure", counting)
    return calls


@pytest.fixture
def exports(monkeypatch):
    done: list = []
    real = onnx_export.export
    monkeypatch.setattr(onnx_export, "export", lambda graph, path: (done.append(path), real(graph, path)))
    return done


def answer(monkeypatch, rates: dict[str, float]) -> None:
    """Make the measurement answer ``rates`` (tokens/s per engine) without timing anything."""
    monkeypatch.setattr(backend_choice, "measure", lambda extractor, engines: {e: rates[e] for e in engines})


def make(model: str, backend: str = "auto", job_tokens: int | None = None, engine=None, **config) -> Extractor:
    config = ExtractConfig(model=model, backend=backend, **config)
    return Extractor(config, device="cpu", job_tokens=job_tokens, engine=engine)


def stored_entries(tmp_path) -> dict:
    """The cached backend choices (the torch engine's kernel choice is cached beside them when it is timed)."""
    path = tmp_path / "cache" / kernel_choice.CACHE_FILE
    entries = json.loads(path.read_text())["entries"] if path.exists() else {}
    return {key: entry for key, entry in entries.items() if "kind" in entry["covers"]}


def test_candidates_are_the_exact_engines_or_the_bf16_ones(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(backend_choice, "_installed", lambda package: True)
    assert backend_choice.candidates("auto", cpu) == ("torch", "openvino")
    assert backend_choice.candidates("auto", cuda) == ("torch",)
    for backend in ("torch", "int8", "openvino", "ort-int8"):
        assert backend_choice.candidates(backend, cpu) == (backend,)  # auto never picks int8: it moves vectors
    monkeypatch.setattr(bf16, "cpu_flags", lambda: frozenset({"avx2"}))
    assert backend_choice.candidates("bf16", cpu) == ("torch",)  # no native bf16: the fp32 path
    monkeypatch.setattr(bf16, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert backend_choice.candidates("bf16", cpu) == ("torch-bf16", "openvino-bf16")
    assert backend_choice.candidates("bf16", cuda) == ("torch",)  # CUDA: the extractor's autocast
    monkeypatch.setattr(backend_choice, "_installed", lambda package: package != "openvino")
    assert backend_choice.candidates("auto", cpu) == ("torch",)
    assert backend_choice.candidates("bf16", cpu) == ("torch-bf16",)


def test_a_small_job_neither_measures_nor_exports(tiny_gpt2_shared, cache, exports, tmp_path):
    ex = make(tiny_gpt2_shared, job_tokens=500)
    assert ex.engine == "torch" and ex.config.backend == "torch"
    assert "not measured yet" in ex.backend_note
    assert ex.embed(["one query"]).shape == (1, 32)
    assert cache == [] and exports == [] and stored_entries(tmp_path) == {}


@needs_openvino
def test_a_large_job_measures_once_records_the_choice_and_keeps_the_vectors(
    tiny_gpt2_shared, cache, monkeypatch, tmp_path, caplog
):
    monkeypatch.setattr(backend_choice, "MEASURE_AFTER_TOKENS", 1000)
    reference = make(tiny_gpt2_shared, backend="torch", layers=(1, -1)).embed(TEXTS)
    with caplog.at_level("INFO"):
        ex = make(tiny_gpt2_shared, job_tokens=5000, layers=(1, -1))
    why = f"{ex.backend_note}\n{caplog.text}"  # what was measured, and any engine that failed
    assert cache == [("torch", "openvino")], why
    assert ex.config.backend == ex.engine in ("torch", "openvino"), why  # the engine it ran on, never "auto"
    entries = stored_entries(tmp_path)
    assert len(entries) == 1, (entries, why)
    (entry,) = entries.values()
    assert entry["choice"] == ex.engine and entry["covers"]["kind"] == "auto"
    assert set(entry["measured"]) == {"torch", "openvino"}, why
    assert all(r > 0 for r in entry["measured"].values())
    assert "measured" in ex.backend_note
    got = ex.embed(TEXTS)
    for column, want in reference.items():
        assert cosines(got[column], want).min() >= 0.99999, (column, ex.backend_note)
    again = make(tiny_gpt2_shared, job_tokens=5000, layers=(1, -1))  # the next process: the cached answer
    assert cache == [("torch", "openvino")] and again.engine == ex.engine, (
        again.backend_note,
        stored_entries(tmp_path),
    )
    assert "measured earlier" in again.backend_note


@needs_openvino
@pytest.mark.parametrize(
    ("rates", "engine"), [({"torch": 100, "openvino": 120}, "openvino"), ({"torch": 100, "openvino": 102}, "torch")]
)
def test_the_faster_engine_wins_by_a_margin(tiny_gpt2_shared, cache, monkeypatch, rates, engine):
    monkeypatch.setattr(backend_choice, "MEASURE_AFTER_TOKENS", 1000)
    answer(monkeypatch, rates)
    ex = make(tiny_gpt2_shared, job_tokens=5000)
    assert ex.engine == engine and ex.config.backend == engine
    assert (ex.config.to_dict()["backend"], ex.embed(["x"]).shape) == (engine, (1, 32))


@needs_openvino
def test_a_cached_openvino_answer_is_used_by_a_small_job_only_where_the_export_exists(
    tiny_gpt2_shared, cache, monkeypatch, exports
):
    monkeypatch.setattr(backend_choice, "MEASURE_AFTER_TOKENS", 1000)
    answer(monkeypatch, {"torch": 100, "openvino": 200})
    assert make(tiny_gpt2_shared, job_tokens=5000, layers=(1,)).engine == "openvino"  # cached, nothing exported yet
    assert exports == []
    small = make(tiny_gpt2_shared, job_tokens=10, layers=(1,))
    assert small.engine == "torch" and "export is not built yet" in small.backend_note
    assert exports == []
    make(tiny_gpt2_shared, backend="openvino", layers=(1,)).embed(["builds the export"])
    assert len(exports) == 1
    small = make(tiny_gpt2_shared, job_tokens=10, layers=(1,))
    assert small.engine == "openvino" and small.config.backend == "openvino"
    small.embed(["a query"])
    assert len(exports) == 1  # the export was read from the cache


@needs_openvino
@pytest.mark.parametrize("choice", ["int8", "ort-int8", "os.system", "torch-bf16", 3, None])
def test_an_entry_naming_an_unknown_or_approximate_engine_is_ignored(
    tiny_gpt2_shared, cache, monkeypatch, tmp_path, choice
):
    monkeypatch.setattr(backend_choice, "MEASURE_AFTER_TOKENS", 1000)
    answer(monkeypatch, {"torch": 200, "openvino": 100})
    ex = make(tiny_gpt2_shared, job_tokens=5000)
    (key,) = stored_entries(tmp_path)
    path = tmp_path / "cache" / kernel_choice.CACHE_FILE
    data = json.loads(path.read_text())
    data["entries"][key]["choice"] = choice
    path.write_text(json.dumps(data))
    measured = []
    monkeypatch.setattr(backend_choice, "measure", lambda e, engines: measured.append(1) or {"torch": 2, "openvino": 1})
    ex = make(tiny_gpt2_shared, job_tokens=5000)
    assert ex.engine == "torch" and measured == [1]
    assert stored_entries(tmp_path)[key]["choice"] == "torch"


def test_the_key_covers_the_candidates_batch_size_and_runtime_version(tiny_gpt2_shared, cache, monkeypatch):
    monkeypatch.setattr(backend_choice, "_installed", lambda package: True)
    ex = make(tiny_gpt2_shared, backend="torch")
    shape = backend_choice._shape(ex, ("torch",))
    key, covers = kernel_choice.choice_key(shape, "auto", ("torch",))
    assert covers["kind"] == "auto" and covers["candidates"] == ["torch"] and shape["batch_tokens"] == ex.batch_tokens
    assert kernel_choice.choice_key(shape, "auto", ("torch", "openvino"))[0] != key
    assert kernel_choice.choice_key({**shape, "batch_tokens": 1024}, "auto", ("torch",))[0] != key
    assert kernel_choice.choice_key(shape, "bf16", ("torch",))[0] != key
    if HAS_OPENVINO:
        assert "openvino" in backend_choice._shape(ex, ("torch", "openvino"))


def test_without_openvino_auto_is_torch_without_a_word_of_measuring(tiny_gpt2_shared, cache, monkeypatch):
    monkeypatch.setattr(backend_choice, "_installed", lambda package: package not in ("openvino",))
    monkeypatch.setattr(backend_choice, "MEASURE_AFTER_TOKENS", 1)
    ex = make(tiny_gpt2_shared, job_tokens=10**6)
    assert (ex.engine, ex.config.backend, ex.backend_note, cache) == ("torch", "torch", "", [])


@pytest.fixture
def native(monkeypatch):
    monkeypatch.setattr(bf16, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))


@needs_openvino
def test_bf16_measures_torch_bf16_against_openvino_bf16_and_stays_recorded_as_bf16(
    tiny_gpt2_shared, cache, monkeypatch, native, tmp_path
):
    monkeypatch.setattr(backend_choice, "MEASURE_AFTER_TOKENS", 1000)
    reference = make(tiny_gpt2_shared, backend="torch").embed(TEXTS)
    ex = make(tiny_gpt2_shared, backend="bf16", job_tokens=5000)
    assert cache == [("torch-bf16", "openvino-bf16")]
    assert ex.engine in ("torch-bf16", "openvino-bf16") and ex.config.backend == "bf16"
    (entry,) = stored_entries(tmp_path).values()
    assert entry["covers"]["kind"] == "bf16" and set(entry["measured"]) == {"torch-bf16", "openvino-bf16"}
    assert cosines(ex.embed(TEXTS), reference).min() >= 0.999


@needs_openvino
@pytest.mark.parametrize("engine", ["torch-bf16", "openvino-bf16"])
def test_bf16_runs_on_the_engine_chosen(tiny_gpt2_shared, cache, monkeypatch, native, engine):
    monkeypatch.setattr(backend_choice, "MEASURE_AFTER_TOKENS", 1000)
    answer(monkeypatch, {"torch-bf16": 100, "openvino-bf16": 100, engine: 200})
    reference = make(tiny_gpt2_shared, backend="torch").embed(TEXTS)
    ex = make(tiny_gpt2_shared, backend="bf16", job_tokens=5000)
    assert ex.engine == engine and ex.config.backend == "bf16"
    converted = any(isinstance(m, bf16.BF16Linear) for m in ex.loaded.model.modules())
    assert converted == (engine == "torch-bf16")
    got = ex.embed(TEXTS)
    assert cosines(got, reference).min() >= 0.999
    assert bool(runtime_backends._runners.get(ex.loaded.model)) == (engine == "openvino-bf16")


def test_bf16_without_native_bf16_says_so_and_runs_fp32(tiny_gpt2_shared, cache, monkeypatch, caplog):
    monkeypatch.setattr(bf16, "cpu_flags", lambda: frozenset({"avx2"}))
    with caplog.at_level("WARNING"):
        ex = make(tiny_gpt2_shared, backend="bf16", job_tokens=10**6)
    assert "no native bfloat16" in caplog.text
    assert (ex.engine, ex.config.backend, cache) == ("torch", "bf16", [])


@needs_openvino
def test_embed_auto_records_the_backend_and_says_the_choice(tiny_gpt2_shared, cache, monkeypatch, write_csv, tmp_path):
    from embedkit.cli import cli

    monkeypatch.setattr(backend_choice, "MEASURE_AFTER_TOKENS", 50)  # the CSV below is ~1 kB
    answer(monkeypatch, {"torch": 100, "openvino": 150})
    src = write_csv([{"text": t} for t in TEXTS])
    out = tmp_path / "auto.parquet"
    args = ["embed", str(src), "-o", str(out), "--model", tiny_gpt2_shared, "--backend", "auto", "--device", "cpu"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "backend openvino (backend auto: measured openvino 150, torch 100 tokens/s" in result.output
    meta = json.loads(pq.read_schema(out).metadata[b"embedkit"])
    assert meta["config"]["backend"] == "openvino"
    reference = make(tiny_gpt2_shared, backend="torch").embed(TEXTS)
    stored = np.stack(pq.read_table(out).column("embedding").to_pylist())
    assert cosines(stored, reference).min() >= 0.99999


def test_an_engine_can_be_forced_among_the_candidates_only(tiny_gpt2_shared, cache, monkeypatch, native):
    from embedkit import ConfigError

    ex = make(tiny_gpt2_shared, backend="bf16", engine="torch-bf16")
    assert ex.engine == "torch-bf16" and cache == []
    monkeypatch.setattr(bf16, "cpu_flags", lambda: frozenset({"avx2"}))
    with pytest.raises(ConfigError, match="cannot run on engine 'openvino-bf16' here; it may run on: torch"):
        make(tiny_gpt2_shared, backend="bf16", engine="openvino-bf16")


def test_backends_with_the_same_vectors_compare_as_one():
    torch_config = ExtractConfig(model="m", backend="torch")
    assert ExtractConfig(model="m", backend="openvino").vector_settings() == torch_config.vector_settings()
    for approximate in ("int8", "ort-int8", "bf16"):
        assert ExtractConfig(model="m", backend=approximate).vector_settings() != torch_config.vector_settings()
    assert ExtractConfig(model="m", backend="openvino").to_dict()["backend"] == "openvino"  # recorded as it ran
