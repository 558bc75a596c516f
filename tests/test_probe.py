"""The probe stage: one forward pass, the layer x pooling table, the report files, the reproduce command, bad input."""

from __future__ import annotations

import csv
import json
import random
import shlex

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from conftest import sample_texts

from embedkit import ConfigError, ExtractConfig, Runtime
from embedkit.classify import train
from embedkit.cli import cli
from embedkit.embed import embed_file
from embedkit.probe import (
    FILE_CSV,
    FILE_JSON,
    FILE_PLOT,
    PROBE_OPTIONS,
    load_report,
    parse_layers,
    probe_file,
    stratified_sample,
)
from embedkit.store import open_features
from embedkit.summary import summary_text

POOLINGS = ("mean", "last", "weighted-mean")
TOPICS = {"money": "bank loan price market money", "pets": "cat dog bird fish tree", "sport": "ball team win lose game"}


def labelled_rows(n: int = 45, seed: int = 0) -> list[dict]:
    """Texts whose class is learnable: each ends with three words of its topic after random filler."""
    rng = random.Random(seed)
    labels = list(TOPICS)
    rows = []
    for i, filler in enumerate(sample_texts(n, seed=seed, max_words=8)):
        label = labels[i % len(labels)]
        rows.append(
            {"text": filler[:-1] + " " + " ".join(rng.choice(TOPICS[label].split()) for _ in range(3)), "label": label}
        )
    return rows


def write_rows(path, rows: list[dict]):
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


@pytest.fixture(scope="module")
def probed(tiny_gpt2_shared, tmp_path_factory):
    """One probe over every layer of the tiny GPT-2 (0, 1, 2) and three poolings, features saved."""
    work = tmp_path_factory.mktemp("probe")
    rows = labelled_rows()
    rows[4]["text"] = "   "  # an empty text and a missing label: skipped and counted, never a crash
    rows[10]["label"] = ""
    data = write_rows(work / "labelled.csv", rows)
    config = ExtractConfig(model=tiny_gpt2_shared, pooling=POOLINGS)
    result = probe_file(
        data,
        "label",
        work / "report",
        config,
        cv=3,
        save_features=work / "features.parquet",
        runtime=Runtime(device="cpu", progress=False),
    )
    return result, data, work


def test_one_forward_pass_collects_every_layer_and_pooling(tiny_gpt2_shared, write_csv, tmp_path):
    data = write_csv(labelled_rows(30))
    calls = []

    def count(module, _args):
        if type(module).__name__ == "GPT2Model":
            calls.append(module)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
    try:
        probe_file(
            data,
            "label",
            tmp_path / "r",
            ExtractConfig(model=tiny_gpt2_shared, pooling=POOLINGS),
            cv=3,
            runtime=Runtime(device="cpu", progress=False),
        )
        probe_passes = len(calls)
        calls.clear()
        embed_file(data, tmp_path / "last.parquet", ExtractConfig(model=tiny_gpt2_shared), device="cpu", progress=False)
        last_layer_passes = len(calls)
    finally:
        handle.remove()
    # 3 layers x 3 poolings cost exactly the forward passes of embedding the deepest layer alone.
    assert probe_passes == last_layer_passes > 0


def test_table_has_one_row_per_layer_and_pooling(probed):
    result, _, _ = probed
    assert [(s.layer, s.pooling) for s in result.scores] == [(layer, p) for layer in (0, 1, 2) for p in POOLINGS]
    for s in result.scores:
        assert len(s.fold_accuracy) == len(s.fold_macro_f1) == 3 and s.rows == 43
        assert 0 <= s.accuracy_std <= s.accuracy_mean <= 1
    assert max(s.accuracy_mean for s in result.scores) > 0.6  # the topic words are learnable (chance: 0.33)
    assert result.summary["rows"] == {"input": 45, "skipped": {"empty": 1, "missing label": 1}, "scored": 43}


def test_report_files(probed):
    result, _, work = probed
    report = work / "report"
    assert sorted(p.name for p in report.iterdir()) == sorted([FILE_CSV, FILE_JSON, FILE_PLOT, "embedkit_probe.json"])
    assert load_report(report).summary == json.loads((report / FILE_JSON).read_text())  # every file verified
    hidden = sorted(p.name for p in work.iterdir() if p.name.startswith("."))
    assert hidden == [".features.parquet.lock", ".report.lock"]  # the locks stay; no staging or temp file does
    with (report / FILE_CSV).open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 9 and {
        "layer",
        "pooling",
        "accuracy_mean",
        "accuracy_std",
        "macro_f1_mean",
        "macro_f1_std",
    } <= set(table[0])
    summary = json.loads((report / FILE_JSON).read_text())
    assert summary["table"] == [s.row() for s in result.scores] and summary["cv"] == 3
    assert (report / FILE_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = summary["best"]
    assert (best["layer"], best["pooling"]) == (result.best.layer, result.best.pooling)
    assert best["macro_f1_mean"] == max(row["macro_f1_mean"] for row in summary["table"])
    assert "embedkit embed" in summary_text(result) and best["embed_command"] in summary_text(result)


def test_saved_features_are_a_normal_features_file(probed):
    _, _, work = probed
    feats = open_features(work / "features.parquet")
    assert feats.config.layers == (0, 1, 2) and feats.config.pooling == POOLINGS
    assert len(feats.embedding_columns) == 9 and "label" in feats.schema.names and feats.num_rows == 45


def test_the_reproduce_command_makes_the_best_features_and_train_gets_the_same_score(probed, tmp_path):
    result, data, work = probed
    args = shlex.split(result.embed_command)
    assert args[:3] == ["embedkit", "embed", str(data)]
    args[args.index("-o") + 1] = str(tmp_path / "best.parquet")
    assert run(*args[1:]).exit_code == 0
    column = result.best.column
    X_best = np.array(pq.read_table(tmp_path / "best.parquet").column("embedding").drop_null().to_pylist())
    X_probe = np.array(pq.read_table(work / "features.parquet").column(column).drop_null().to_pylist())
    np.testing.assert_allclose(X_best, X_probe, rtol=1e-5, atol=1e-5)
    metrics = train(tmp_path / "best.parquet", "label", tmp_path / "model", cv=3, options=PROBE_OPTIONS).metrics
    assert metrics["evaluation"]["fold_accuracy"] == pytest.approx(result.best.fold_accuracy, abs=1e-12)
    assert metrics["accuracy"] == pytest.approx(result.best.accuracy, abs=1e-12)


def test_cli_prints_the_table_best_pair_and_command(tiny_gpt2_shared, write_csv, tmp_path):
    data = write_csv(labelled_rows(30))
    out = tmp_path / "rep"
    result = run(
        "probe",
        data,
        "--label-column",
        "label",
        "-o",
        out,
        "--model",
        tiny_gpt2_shared,
        "--layers",
        "0,-1",
        "--pooling",
        "mean,last",
        "--cv",
        "3",
        "--nmi",
        "--quiet",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "macro-F1" in result.output and "NMI" in result.output
    assert "best by macro-f1: layer" in result.output and "reproduce: embedkit embed" in result.output
    summary = json.loads((out / FILE_JSON).read_text())
    assert [(r["layer"], r["pooling"]) for r in summary["table"]] == [
        (0, "mean"),
        (0, "last"),
        (2, "mean"),
        (2, "last"),
    ]
    assert all(0 <= r["nmi"] <= 1 for r in summary["table"])
    again = run("probe", data, "-y", "label", "-o", out, "--model", tiny_gpt2_shared, "--quiet")
    assert again.exit_code == 5 and "--overwrite" in again.output


def test_sample_is_stratified_and_seeded(tiny_gpt2_shared, write_csv, tmp_path):
    labels = ["a"] * 80 + ["b"] * 16 + ["c"] * 4
    picked = stratified_sample(labels, 25, seed=1, min_per_class=3)
    counts = {c: sum(labels[i] == c for i in picked) for c in "abc"}
    assert counts == {"a": 20, "b": 4, "c": 3} and list(picked) == sorted(picked)
    assert list(picked) == list(stratified_sample(labels, 25, seed=1, min_per_class=3))
    assert list(picked) != list(stratified_sample(labels, 25, seed=2, min_per_class=3))
    assert len(stratified_sample(labels, 500, seed=0)) == 100
    result = probe_file(
        write_csv(labelled_rows(60)),
        "label",
        tmp_path / "r",
        ExtractConfig(model=tiny_gpt2_shared),
        layers=[-1],
        cv=3,
        sample=21,
        runtime=Runtime(device="cpu", progress=False),
    )
    assert result.summary["rows"]["sampled"] == 21 and result.scores[0].rows == 21
    assert result.summary["class_counts"] == {"money": 20, "pets": 20, "sport": 20}


def test_parse_layers():
    assert parse_layers("all") == "all" and parse_layers(("ALL",)) == "all"
    assert parse_layers("0,3,6,-1") == (0, 3, 6, -1) and parse_layers(("0", "3,-1")) == (0, 3, -1)
    for bad in ("", "all,1", "x,1"):
        with pytest.raises(ConfigError):
            parse_layers(bad)


@pytest.mark.parametrize(
    "rows, args, code, message",
    [
        (None, ["-y", "topic"], 3, "'topic' not found; the columns are: text, label"),
        (
            [{"text": t, "label": "a" if i < 20 else "b"} for i, t in enumerate(sample_texts(22))],
            [],
            3,
            "class 'b' has 2 row(s)",
        ),
        ([{"text": t, "label": "a"} for t in sample_texts(10)], [], 3, "single class"),
        ([{"text": "", "label": "a"}, {"text": "x", "label": ""}], [], 3, "no row has both a text"),
        (None, ["--layers", "0,x"], 2, "not 'all' or a list of integers"),
        (None, ["--layers", "7"], 2, "layer 7 is out of range"),
        (None, ["--layers", "2,-1"], 2, "name the same layer twice"),
        (None, ["--pooling", "median"], 2, "unknown pooling 'median'"),
        (None, ["--metric", "nmi"], 2, "--metric nmi needs --nmi"),
        (None, ["--cv", "1"], 2, "--cv"),
    ],
)
def test_bad_input(tiny_gpt2_shared, write_csv, tmp_path, rows, args, code, message):
    data = write_csv(rows or labelled_rows(30))
    label = [] if "-y" in args else ["-y", "label"]
    result = run(
        "probe", data, *label, "-o", tmp_path / "rep", "--model", tiny_gpt2_shared, "--cv", "3", "--quiet", *args
    )
    assert result.exit_code == code, result.output
    assert message in result.output
    assert not (tmp_path / "rep" / FILE_JSON).exists()


def test_missing_input_and_bad_model(tiny_gpt2_shared, write_csv, tmp_path):
    result = run("probe", tmp_path / "nope.csv", "-y", "label", "-o", tmp_path / "rep", "--model", tiny_gpt2_shared)
    assert result.exit_code == 3 and "does not exist" in result.output
    result = run(
        "probe", write_csv(labelled_rows(30)), "-y", "label", "-o", tmp_path / "rep", "--model", tmp_path / "no-model"
    )
    assert result.exit_code == 4 and "no-model" in result.output
    with pytest.raises(ConfigError, match="--layers"):
        probe_file(
            tmp_path / "nope.csv", "label", tmp_path / "rep", layers="x"
        )  # options are checked before any reading
