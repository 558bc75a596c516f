"""Artefacts are data, never code (issue #15).

* A ``trust_remote_code: true`` stored in a features file, an index, a classifier or a pipeline file never makes a
  model's own Python code run; only ``--trust-remote-code`` / ``trust_remote_code=True`` does. Every test here
  has its positive control: the same command with the flag does run the code, so the marker check can fail.
* Stored settings are type-checked: a hand-edited wrong type is a corrupt artefact (exit 3), never coerced.
* An artefact names its model by an absolute path (or hub id + commit) and a fingerprint: later stages work
  from any directory and refuse a model directory whose files changed (exit 6).
* A broken model directory is a model load error (exit 4), never an internal error (exit 1).
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import sample_texts

from embedkit import ExtractConfig, IncompatibleError, InputError, ModelLoadError
from embedkit.cli import cli
from embedkit.estimator import HiddenStateEmbedder
from embedkit.extract.model import fingerprint_directory
from embedkit.store import META_KEY, open_features, read_metadata

EVIL_CONFIG = """
import pathlib
from transformers import GPT2Config

pathlib.Path({marker!r}).write_text("configuration code ran")


class EvilConfig(GPT2Config):
    model_type = "evil"

    def __init__(self, **kwargs):
        # Also on every use: the module is imported once per process and cached.
        pathlib.Path({marker!r}).write_text("configuration code ran")
        super().__init__(**kwargs)
"""

EVIL_MODEL = """
import pathlib
from transformers import GPT2Model
from .configuration_evil import EvilConfig

pathlib.Path({marker!r}).write_text("modeling code ran")


class EvilModel(GPT2Model):
    config_class = EvilConfig

    def __init__(self, config):
        pathlib.Path({marker!r}).write_text("modeling code ran")
        super().__init__(config)
"""


# ---------------------------------------------------------------------------------------------- helpers


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def write_texts(path: Path, n: int = 40) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["doc", "text", "label"])
        w.writeheader()
        w.writerows({"doc": f"d{i}", "text": t, "label": "ab"[i % 2]} for i, t in enumerate(sample_texts(n, seed=5)))
    return path


def edit_features_meta(path: Path, change) -> None:
    """Rewrite the ``embedkit`` Parquet metadata of a features file by hand (as an attacker or a typo would)."""
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[META_KEY])
    change(meta)
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, META_KEY: json.dumps(meta).encode()}), path)


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def set_trust(config_key: str):
    def change(data):
        data[config_key]["trust_remote_code"] = True

    return change


@pytest.fixture(scope="session")
def _modules_cache(tmp_path_factory) -> str:
    # Transformers copies a model's code into its modules cache and imports it from there as the package
    # transformers_modules, once per process: one temporary cache for the session, not the user's.
    return str(tmp_path_factory.mktemp("hf-modules"))


@pytest.fixture
def evil_model(_gpt2_master, _modules_cache, tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A tiny GPT-2 that ships its own code (``auto_map``); running that code writes ``marker``."""
    import transformers.dynamic_module_utils as dyn

    monkeypatch.setattr(dyn, "HF_MODULES_CACHE", _modules_cache)
    marker = tmp_path / "marker"
    # A name unique to the test: Python caches imported modules by name for the whole session.
    model = tmp_path / f"evil_{tmp_path.name.replace('-', '_')}"
    shutil.copytree(_gpt2_master, model)
    edit_json(
        model / "config.json",
        lambda c: c.update(
            model_type="evil",
            architectures=["EvilModel"],
            auto_map={"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"},
        ),
    )
    (model / "configuration_evil.py").write_text(EVIL_CONFIG.format(marker=str(marker)))
    (model / "modeling_evil.py").write_text(EVIL_MODEL.format(marker=str(marker)))
    return model, marker


@pytest.fixture
def evil_features(evil_model, tmp_path) -> tuple[Path, Path, Path]:
    """Features made (with consent) from the model that ships code: they store trust_remote_code = true."""
    model, marker = evil_model
    out = tmp_path / "f.parquet"
    r = invoke(
        "embed",
        write_texts(tmp_path / "t.csv"),
        "-o",
        out,
        "--model",
        model,
        "--id-column",
        "doc",
        "--keep",
        "text,label",
        "--trust-remote-code",
        "--device",
        "cpu",
        "-q",
    )
    assert r.exit_code == 0, r.output
    assert marker.exists()  # the fixture's own control: this model's code runs when trusted
    assert read_metadata(out)["config"]["trust_remote_code"] is True
    marker.unlink()
    return out, model, marker


def assert_refused(result, marker: Path) -> None:
    assert result.exit_code == 4, result.output
    assert "needs its own Python code to run; pass --trust-remote-code" in result.output
    assert "Traceback" not in result.output
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- trust


def test_without_the_flag_a_model_that_ships_code_is_refused(evil_model, tmp_path):
    model, marker = evil_model
    r = invoke(
        "embed",
        write_texts(tmp_path / "t.csv"),
        "-o",
        tmp_path / "f.parquet",
        "--model",
        model,
        "--device",
        "cpu",
        "-q",
    )
    assert_refused(r, marker)


def test_features_stored_trust_is_ignored_by_from_features(evil_features, caplog):
    features, _, marker = evil_features
    embedder = HiddenStateEmbedder.from_features(features, device="cpu")
    assert embedder.trust_remote_code is False
    assert not caplog.text  # reading the settings is not loading the model: nothing to warn about yet
    with caplog.at_level(logging.WARNING), pytest.raises(ModelLoadError, match="pass --trust-remote-code"):
        embedder.fit()
    assert "f.parquet (embedkit metadata) stores trust_remote_code = true; ignored" in caplog.text
    assert "pass --trust-remote-code" in caplog.text
    assert not marker.exists()
    assert open_features(features).config.trust_remote_code is False

    trusted = HiddenStateEmbedder.from_features(features, device="cpu", trust_remote_code=True).fit()
    assert marker.exists() and trusted.transform(["a text"]).shape == (1, 32)


def test_index_json_stored_trust_is_ignored_by_search(evil_features, tmp_path, caplog):
    features, _, marker = evil_features
    assert invoke("index", "build", features, "-o", tmp_path / "ix", "-q").exit_code == 0
    assert not marker.exists()  # building an index never loads the model
    edit_json(tmp_path / "ix" / "index.json", set_trust("config"))
    with caplog.at_level(logging.WARNING):
        assert_refused(invoke("search", tmp_path / "ix", "some words", "--device", "cpu"), marker)
    assert "index.json stores trust_remote_code = true; ignored" in caplog.text

    r = invoke("search", tmp_path / "ix", "some words", "--device", "cpu", "--trust-remote-code")
    assert r.exit_code == 0, r.output
    assert marker.exists()


def test_classifier_manifest_stored_trust_is_ignored_by_predict(evil_features, tmp_path):
    features, _, marker = evil_features
    r = invoke("train", features, "-y", "label", "-o", tmp_path / "clf", "--test-size", "0")
    assert r.exit_code == 0, r.output
    edit_json(tmp_path / "clf" / "embedkit_model.json", set_trust("extract_config"))
    texts = write_texts(tmp_path / "new.csv", 5)
    r = invoke("predict", tmp_path / "clf", texts, "-o", tmp_path / "p.csv", "--device", "cpu", "-q")
    assert_refused(r, marker)

    r = invoke(
        "predict", tmp_path / "clf", texts, "-o", tmp_path / "p.csv", "--device", "cpu", "-q", "--trust-remote-code"
    )
    assert r.exit_code == 0, r.output
    assert marker.exists()


def write_pipeline(tmp_path: Path, model: Path, extra: str = "") -> Path:
    write_texts(tmp_path / "t.csv")
    path, out = tmp_path / "p.toml", tmp_path / "out"
    path.write_text(
        f'[pipeline]\noutput_dir = "{out}"\n[source]\npath = "t.csv"\nlabel_column = "label"\n'
        f'[extract]\nmodel = "{model}"\ntrust_remote_code = true\ndevice = "cpu"\n{extra}'
    )
    return path


def test_pipeline_file_stored_trust_is_ignored_by_run(evil_model, tmp_path, caplog):
    model, marker = evil_model
    path = write_pipeline(tmp_path, model)
    with caplog.at_level(logging.WARNING):
        assert_refused(invoke("run", path, "-q"), marker)
    assert "p.toml [extract] stores trust_remote_code = true; ignored" in caplog.text

    r = invoke("run", path, "-q", "--trust-remote-code")
    assert r.exit_code == 0, r.output
    assert marker.exists()


def test_pipeline_stage_table_cannot_grant_trust(tiny_gpt2_shared, tmp_path):
    stages = '[train]\n[predict]\ninput = "t.csv"\ntrust_remote_code = true\n'
    path = write_pipeline(tmp_path, Path(tiny_gpt2_shared), stages)
    r = invoke("run", path, "-q")
    assert r.exit_code == 2, r.output
    assert "[predict] unknown key(s) 'trust_remote_code'" in r.output


def test_pipeline_stages_use_the_run_flag(evil_features, tmp_path):
    """[index] + [search] reload the model from the index: the run's flag reaches them, the file's does not."""
    _, model, marker = evil_features
    path = write_pipeline(tmp_path, model, '[index]\n[search]\nqueries = "t.csv"\n')
    r = invoke("run", path, "-q", "--trust-remote-code")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / "search-hits.parquet").exists()
    assert json.loads((tmp_path / "out" / "index" / "index.json").read_text())["config"]["trust_remote_code"] is False


# ---------------------------------------------------------------------------------------------- strict types


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda c: c.update(layers=[1.5]), "layers must be an integer, got float 1.5"),
        (lambda c: c.update(layers=[True]), "layers must be an integer, got True"),
        (lambda c: c.update(layers="2"), "layers must be an integer, got str '2'"),
        (lambda c: c.update(layers={"2": 2}), "layers must be a list"),
        (lambda c: c.update(pooling=3), "pooling must be a string, got int 3"),
        (lambda c: c.update(pooling=["mean", None]), "pooling must be a string"),
        (lambda c: c.update(max_length="64"), "max_length must be an integer"),
        (lambda c: c.update(stride=1.0), "stride must be an integer"),
        (lambda c: c.update(normalize="no"), "normalize must be true or false"),
        (lambda c: c.update(model=["gpt2"]), "model must be a string"),
        (lambda c: c.update(revision=5), "revision must be a string or null"),
        (lambda c: c.update(backend="onnx"), "unknown backend"),
        (lambda c: c.update(colour="red"), "unknown extraction setting"),
    ],
)
def test_hand_edited_settings_are_a_corrupt_artefact(features_file, tmp_path, change, field):
    features = features_file(n=12)
    edit_features_meta(features, lambda m: change(m["config"]))
    r = invoke("info", features)
    assert r.exit_code == 3, r.output
    assert str(features) in r.output and field in r.output and "Traceback" not in r.output
    with pytest.raises(InputError, match=field):
        HiddenStateEmbedder.from_features(features)


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.pop("config"),
        lambda m: m.update(config=None),
        lambda m: m.update(config=[1, 2]),
        lambda m: m.update(config={}),
        lambda m: m["config"].pop("model"),
        lambda m: m.update(model="gpt2"),
        lambda m: m["model"].update(fingerprint=42),
    ],
)
def test_features_metadata_of_the_wrong_shape_is_exit_3(features_file, change):
    features = features_file(n=12)
    edit_features_meta(features, change)
    r = invoke("info", features)
    assert r.exit_code == 3, r.output
    assert str(features) in r.output


def test_hand_edited_index_and_manifest_settings_are_exit_3(features_file, tmp_path):
    features = features_file(n=30)
    assert invoke("index", "build", features, "-o", tmp_path / "ix", "-q").exit_code == 0
    edit_json(tmp_path / "ix" / "index.json", lambda m: m["config"].update(layers=[1.5]))
    r = invoke("search", tmp_path / "ix", "words", "--device", "cpu")
    assert r.exit_code == 3 and "index.json" in r.output and "layers" in r.output, r.output

    assert invoke("train", features, "-y", "label", "-o", tmp_path / "clf", "--test-size", "0").exit_code == 0
    manifest = tmp_path / "clf" / "embedkit_model.json"
    edit_json(manifest, lambda m: m["extract_config"].update(pooling=[3]))
    r = invoke("predict", tmp_path / "clf", features, "-o", tmp_path / "p.csv")
    assert r.exit_code == 3 and "embedkit_model.json" in r.output and "pooling must be a string" in r.output, r.output
    edit_json(manifest, lambda m: m.pop("extract_config"))
    r = invoke("predict", tmp_path / "clf", features, "-o", tmp_path / "p.csv")
    assert r.exit_code == 3 and "embedkit_model.json" in r.output, r.output


def test_python_callers_keep_their_conveniences():
    import numpy as np

    assert ExtractConfig(model="m", layers=6, pooling="last").layers == (6,)
    assert ExtractConfig(model="m", layers=np.array([1, 2]), max_length=np.int64(64)).layers == (1, 2)
    assert ExtractConfig(model="m", layers=[1, -1], pooling=("mean", "max")).pooling == ("mean", "max")
    for bad in ({"layers": 1.5}, {"layers": [True]}, {"layers": "6"}, {"normalize": 1}):
        with pytest.raises(ValueError):
            ExtractConfig(model="m", **bad)


# ---------------------------------------------------------------------------------------------- model reference


def test_relative_model_path_works_from_another_directory_and_a_changed_model_is_refused(
    tiny_gpt2, tmp_path, monkeypatch, tiny_bert
):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    texts = write_texts(work / "t.csv")
    r = invoke(
        "embed",
        texts,
        "-o",
        "f.parquet",
        "--model",
        "../tiny-gpt2",
        "--id-column",
        "doc",
        "--keep",
        "text,label",
        "--device",
        "cpu",
        "-q",
    )
    assert r.exit_code == 0, r.output
    meta = read_metadata(work / "f.parquet")
    absolute = str(Path(tiny_gpt2).resolve())
    assert meta["config"]["model"] == absolute and meta["model"]["name"] == absolute
    assert meta["model"]["fingerprint"].startswith("sha256:")
    assert invoke("index", "build", "f.parquet", "-o", "ix", "-q").exit_code == 0
    assert invoke("train", "f.parquet", "-y", "label", "-o", "clf", "--test-size", "0").exit_code == 0

    # Elsewhere, "../tiny-gpt2" is another model: the stored reference must not follow the relative path there.
    elsewhere = tmp_path / "elsewhere" / "deep"
    elsewhere.mkdir(parents=True)
    shutil.copytree(tiny_bert, tmp_path / "elsewhere" / "tiny-gpt2")
    monkeypatch.chdir(elsewhere)
    r = invoke("search", work / "ix", "some words", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    r = invoke("predict", work / "clf", texts, "-o", "p.csv", "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    HiddenStateEmbedder.from_features(work / "f.parquet", device="cpu").fit()

    # The same path, other weights: every stage that reloads the model refuses it.
    perturb_weights(tiny_gpt2)
    for r in (
        invoke("search", work / "ix", "some words", "--device", "cpu"),
        invoke("predict", work / "clf", texts, "-o", "p2.csv", "--device", "cpu", "-q"),
    ):
        assert r.exit_code == 6, r.output
        assert f"the model at {absolute} is not the one" in r.output
    with pytest.raises(IncompatibleError, match="is not the one .*f.parquet"):
        HiddenStateEmbedder.from_features(work / "f.parquet", device="cpu").fit()
    # Changing the embedder's model is the caller's choice: the file's fingerprint no longer applies.
    shutil.copytree(tiny_gpt2, tmp_path / "other")
    HiddenStateEmbedder.from_features(work / "f.parquet", device="cpu").set_params(model=str(tmp_path / "other")).fit()
    with pytest.raises(IncompatibleError):  # the same directory spelled differently is still that model
        HiddenStateEmbedder.from_features(work / "f.parquet", device="cpu").set_params(model=tiny_gpt2 + "/.").fit()


def test_artefacts_without_a_fingerprint_still_load(features_file):
    features = features_file(n=12)
    edit_features_meta(features, lambda m: m["model"].pop("fingerprint"))
    embedder = HiddenStateEmbedder.from_features(features, device="cpu").fit()
    assert embedder.transform(["text"]).shape == (1, 32)


def test_fingerprint_covers_model_files_only(tiny_gpt2, tmp_path, monkeypatch):
    model = Path(tiny_gpt2)
    before = fingerprint_directory(model)
    (model / "README.md").write_text("notes")
    (model / "training_args.bin").write_bytes(b"x")
    assert fingerprint_directory(model) == before
    edit_json(model / "tokenizer_config.json", lambda c: c.update(model_max_length=512))
    assert fingerprint_directory(model) != before

    # Large files are sampled: a change inside a sampled block, or of the size, is seen.
    import embedkit.extract.model as m

    monkeypatch.setattr(m, "FULL_HASH_BYTES", 1 << 16)
    big = tmp_path / "big"
    big.mkdir()
    (big / "model.safetensors").write_bytes(bytes(range(256)) * 8192)  # 2 MiB
    first = fingerprint_directory(big)
    data = bytearray((big / "model.safetensors").read_bytes())
    data[8 * (len(data) - m.SAMPLE_BYTES) // (m.SAMPLE_BLOCKS - 1) + 10] ^= 1  # inside the 9th of 16 samples
    (big / "model.safetensors").write_bytes(bytes(data))
    assert fingerprint_directory(big) != first


# ---------------------------------------------------------------------------------------------- broken models


def _config_update(**changes):
    return lambda d: edit_json(d / "config.json", lambda c: c.update(changes))


@pytest.mark.parametrize(
    "break_it",
    [
        lambda d: (d / "config.json").write_text("{not json"),
        lambda d: (d / "config.json").write_text("[1, 2, 3]"),
        lambda d: (d / "config.json").write_text(json.dumps({"model_type": 7})),
        lambda d: (d / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"})),
        _config_update(n_layer="two"),
        _config_update(n_embd=None),
        _config_update(n_layer=0),
        _config_update(n_layer=-1),
        _config_update(n_head=0),
        _config_update(activation_function="evil"),
        lambda d: (d / "tokenizer_config.json").write_text("[]"),
        lambda d: edit_json(d / "tokenizer_config.json", lambda c: c.update(eos_token=5)),
        lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000]),
    ],
)
def test_a_broken_model_directory_is_a_model_load_error(tiny_gpt2, tmp_path, break_it):
    break_it(Path(tiny_gpt2))
    r = invoke(
        "embed",
        write_texts(tmp_path / "t.csv", 3),
        "-o",
        tmp_path / "f.parquet",
        "--model",
        tiny_gpt2,
        "--device",
        "cpu",
        "-q",
    )
    assert r.exit_code == 4, r.output
    assert "internal error" not in r.output and "Traceback" not in r.output


def test_hub_model_is_recorded_by_commit_and_a_moved_ref_is_refused(tiny_gpt2_shared, tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    root = cache / "models--openai-community--gpt2"
    first, second = "a" * 40, "b" * 40
    shutil.copytree(tiny_gpt2_shared, root / "snapshots" / first)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(first)
    out = tmp_path / "f.parquet"
    r = invoke(
        "embed",
        write_texts(tmp_path / "t.csv", 5),
        "-o",
        out,
        "--model",
        "openai-community/gpt2",
        "--device",
        "cpu",
        "-q",
    )
    assert r.exit_code == 0, r.output
    meta = read_metadata(out)
    assert meta["config"]["model"] == "openai-community/gpt2"
    assert meta["model"]["revision"] == first and meta["model"]["fingerprint"] == f"commit:{first}"
    HiddenStateEmbedder.from_features(out, device="cpu").fit()

    # The cache now holds another commit of the same id (a later download): not the features' model.
    changed = root / "snapshots" / second
    shutil.copytree(tiny_gpt2_shared, changed)
    (root / "refs" / "main").write_text(second)
    with pytest.raises(IncompatibleError, match="openai-community/gpt2 is not the one"):
        HiddenStateEmbedder.from_features(out, device="cpu").fit()


def perturb_weights(model_dir: str) -> None:
    import torch
    from transformers import GPT2LMHeadModel

    changed = GPT2LMHeadModel.from_pretrained(model_dir)
    with torch.no_grad():
        changed.transformer.wte.weight.add_(0.01)
    changed.save_pretrained(model_dir)


def test_vectors_of_a_replaced_checkpoint_are_not_mixed_with_the_old_ones(tiny_gpt2, tmp_path):
    """Same path, same settings, other weights: index add and predict on features refuse to mix them."""
    texts = write_texts(tmp_path / "t.csv", 30)

    def embed(out):
        r = invoke("embed", texts, "-o", out, "--model", tiny_gpt2, "--keep", "text,label", "--device", "cpu", "-q")
        assert r.exit_code == 0, r.output

    embed(tmp_path / "old.parquet")
    assert invoke("index", "build", tmp_path / "old.parquet", "-o", tmp_path / "ix", "-q").exit_code == 0
    assert (
        invoke("train", tmp_path / "old.parquet", "-y", "label", "-o", tmp_path / "clf", "--test-size", "0").exit_code
        == 0
    )
    perturb_weights(tiny_gpt2)
    embed(tmp_path / "new.parquet")
    assert open_features(tmp_path / "new.parquet").config == open_features(tmp_path / "old.parquet").config

    r = invoke("index", "add", tmp_path / "ix", tmp_path / "new.parquet", "-q")
    assert r.exit_code == 6 and "model files at" in r.output, r.output
    r = invoke("predict", tmp_path / "clf", tmp_path / "new.parquet", "-o", tmp_path / "p.csv")
    assert r.exit_code == 6 and "model files at" in r.output, r.output
    r = invoke("predict", tmp_path / "clf", tmp_path / "old.parquet", "-o", tmp_path / "p.csv")  # control
    assert r.exit_code == 0, r.output


def test_stored_settings_the_model_cannot_honour_are_incompatible_not_a_usage_error(features_file, tmp_path):
    features = features_file(n=20)
    assert invoke("index", "build", features, "-o", tmp_path / "ix", "-q").exit_code == 0
    edit_json(tmp_path / "ix" / "index.json", lambda m: m["config"].update(layers=[99]))
    r = invoke("search", tmp_path / "ix", "words", "--device", "cpu")
    assert r.exit_code == 6, r.output
    assert "index.json: its stored settings do not fit the model" in r.output and "layer 99 is out of range" in r.output


def test_pipeline_model_path_is_relative_to_the_file(tiny_gpt2, tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    shutil.move(tiny_gpt2, project / "tiny")
    write_texts(project / "t.csv", 10)
    (project / "p.toml").write_text(
        f'[pipeline]\noutput_dir = "{tmp_path / "out"}"\n[source]\npath = "t.csv"\n'
        '[extract]\nmodel = "./tiny"\ndevice = "cpu"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = invoke("run", project / "p.toml", "-q")
    assert r.exit_code == 0, r.output
    assert read_metadata(tmp_path / "out" / "features.parquet")["config"]["model"] == str((project / "tiny").resolve())


def test_an_extractor_of_a_replaced_checkpoint_is_refused_by_the_index(tiny_gpt2, tmp_path):
    from embedkit import Extractor
    from embedkit.index import Index

    r = invoke(
        "embed",
        write_texts(tmp_path / "t.csv", 20),
        "-o",
        tmp_path / "f.parquet",
        "--model",
        tiny_gpt2,
        "--keep",
        "text",
        "--device",
        "cpu",
        "-q",
    )
    assert r.exit_code == 0, r.output
    assert invoke("index", "build", tmp_path / "f.parquet", "-o", tmp_path / "ix", "-q").exit_code == 0
    index = Index.load(tmp_path / "ix", device="cpu")
    settings = index.config.replace(provenance=None)
    index.use_extractor(Extractor(settings, device="cpu"))  # control: the same model is accepted
    perturb_weights(tiny_gpt2)
    with pytest.raises(IncompatibleError, match="model files at .* differ"):
        index.use_extractor(Extractor(settings, device="cpu"))


def test_a_pickled_embedder_refuses_a_model_replaced_since(tiny_gpt2):
    import pickle

    embedder = HiddenStateEmbedder(model=tiny_gpt2, device="cpu").fit()
    saved = pickle.dumps(embedder)
    pickle.loads(saved).transform(["a text"])  # control: the same model reloads
    perturb_weights(tiny_gpt2)
    with pytest.raises(IncompatibleError, match="not the one an embedder loaded earlier was made with"):
        pickle.loads(saved).transform(["a text"])


@pytest.mark.parametrize("name", ["x" * 5000, "/x" * 3000, "~no-such-user-embedkit/x", "a\x00b/c/d"])
def test_model_names_that_cannot_be_paths_are_a_model_load_error(tmp_path, name):
    assert ExtractConfig(model=name).model == name  # not a directory: kept as given
    r = invoke(
        "embed",
        write_texts(tmp_path / "t.csv", 2),
        "-o",
        tmp_path / "f.parquet",
        "--model",
        name,
        "--device",
        "cpu",
        "-q",
    )
    assert r.exit_code == 4, r.output


@pytest.mark.parametrize("model", ["~no-such-user-embedkit/tiny", "x" * 5000, "./missing"])
def test_pipeline_model_that_is_no_directory_is_a_model_load_error(tmp_path, model):
    write_texts(tmp_path / "t.csv", 3)
    (tmp_path / "p.toml").write_text(
        f'[pipeline]\noutput_dir = "{tmp_path / "out"}"\n[source]\npath = "t.csv"\n'
        f'[extract]\nmodel = "{model}"\ndevice = "cpu"\n'
    )
    r = invoke("run", tmp_path / "p.toml", "-q")
    assert r.exit_code == 4, r.output
