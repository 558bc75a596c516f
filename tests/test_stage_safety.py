"""train, predict, cluster and probe outputs under the artefact protocol: hostile artefacts, races, kills, NaN.

The races and kills run the real CLI in separate processes. Where a test needs a writer to still be working when
the second one arrives, the first is held at a gate: one function is wrapped to wait until the test creates a file
(``_GATED``). The lock, the staging directory and the switch are the real ones; only the moments are chosen.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from embedkit import artefact
from embedkit.classify import EVAL_PREDICTIONS, MANIFEST, METRICS_FILE, MODEL_FILE, load_model, train
from embedkit.classify.options import ClassifierOptions
from embedkit.cli import cli
from embedkit.cluster import ClusterOptions, cluster_file, load_clustering
from embedkit.errors import InputError

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
# The "old model" the races and kills start from: logreg with a fixed C, since the search over C (seconds per
# call, ~14 calls) plays no part in which writer wins.
FIXED_C = ClassifierOptions(C=1.0)

# Runs the CLI with one function (argv[2], as module:attribute) waiting until the file argv[1] exists (at most two
# minutes): the writer holds its lock mid-work until the test opens the gate, however slow the machine is.
_GATED = (
    "import importlib, os, sys, time\n"
    "gate, target = sys.argv[1], sys.argv[2]\n"
    "module, name = target.split(':')\n"
    "module = importlib.import_module(module)\n"
    "original = getattr(module, name)\n"
    "def gated(*args, **kwargs):\n"
    "    deadline = time.monotonic() + 120\n"
    "    while not os.path.exists(gate) and time.monotonic() < deadline:\n"
    "        time.sleep(0.05)\n"
    "    return original(*args, **kwargs)\n"
    "setattr(module, name, gated)\n"
    "from embedkit.cli import cli\n"
    "cli(sys.argv[3:], prog_name='embedkit')\n"
)
GATED_TRAIN = "embedkit.classify.training:_fit_and_evaluate"
GATED_CLUSTER = "embedkit.cluster.run:_cluster_into"


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def start(*args, gate: tuple[Path, str] | None = None) -> subprocess.Popen:
    command = [sys.executable, "-c", _GATED, str(gate[0]), gate[1]] if gate else [sys.executable, "-m", "embedkit"]
    return subprocess.Popen(
        [*command, *map(str, args)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    assert "Traceback" not in out + err, out + err
    return proc.returncode, out + err


def staging_of(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.tmp-*"))


def wait_for_staging(target: Path, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Wait until ``proc`` holds the lock of ``target`` and is building it aside; False if it ended first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if staging_of(target):
            return True
        time.sleep(0.01)
    return False


def leftovers(directory: Path) -> list[str]:
    """Names a killed writer could leave: staging and old directories, temp files (locks are meant to stay)."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


@pytest.fixture
def two_features(features_file):
    """Two features files with different classes, so a model (or clustering) tells which run wrote it."""
    return features_file(n=60), features_file(n=40, labels=("x", "y"), name="other.parquet")


def consistent_model(model_dir: Path) -> tuple[str, list]:
    """Load the model (every file verified) and check metrics, predictions and manifest describe one run."""
    model = load_model(model_dir)
    metrics = json.loads((model_dir / METRICS_FILE).read_text())
    assert metrics["classifier"] == model.manifest["classifier"]
    assert metrics["classes"] == model.classes == model.manifest["classes"]
    assert sum(metrics["class_counts"].values()) == metrics["rows_used"]
    evaluated = pq.read_table(model_dir / EVAL_PREDICTIONS)
    assert evaluated.num_rows == metrics["evaluation"]["n_test"]
    assert set(evaluated.column("label").to_pylist()) <= set(model.classes)
    assert model.predict_vectors(np.zeros((3, model.dim)))[0].shape == (3,)
    return model.manifest["classifier"], model.classes


def consistent_clustering(out: Path) -> tuple[str, int]:
    loaded = load_clustering(out)
    clusters = loaded.table().column("cluster").to_numpy()
    assert loaded.summary["clustered_rows"] == len(clusters) == loaded.rows
    assert loaded.summary["k"] == loaded.k == len(set(clusters.tolist()))
    assert [c["size"] for c in loaded.summary["clusters"]] == np.bincount(clusters).tolist()
    return loaded.summary["source"], loaded.k


def with_vectors(features_file, vectors: np.ndarray, labels: list[str], name: str) -> Path:
    """An embed-made features file whose vectors (and labels) are replaced: NaN/inf rows can be planted."""
    path = features_file(n=len(vectors), name=name)
    table = pq.read_table(path)
    # Built by hand: vectors_to_arrow would turn NaN into 0, and a damaged file is exactly what is being planted.
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).reshape(-1)), vectors.shape[1])
    table = table.set_column(table.schema.get_field_index("embedding"), "embedding", column)
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels))
    pq.write_table(table, path)
    return path


# ---------------------------------------------------------------------------------------------- hostile model dirs


@pytest.fixture(scope="module")
def _trained(tiny_gpt2_shared, tmp_path_factory):
    """One features file and one model for the many hostile-manifest cases (each edits its own copy)."""
    from conftest import sample_texts

    from embedkit import ExtractConfig
    from embedkit.embed import embed_file

    root = tmp_path_factory.mktemp("trained")
    rows = "\n".join(f"{t.replace(',', '')},{'abc'[i % 3]}" for i, t in enumerate(sample_texts(60, seed=3)))
    (root / "input.csv").write_text("text,label\n" + rows + "\n")
    embed_file(
        root / "input.csv",
        root / "features.parquet",
        ExtractConfig(model=tiny_gpt2_shared),
        keep=("label",),
        device="cpu",
        progress=False,
    )
    train(root / "features.parquet", "label", root / "model", seed=1)
    return root


@pytest.fixture
def model_and_sentinel(_trained, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(_trained / "model", model_dir)
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("untouched")
    return model_dir, sentinel


def _edit(model_dir: Path, change) -> None:
    path = model_dir / MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _setting(key, value):
    return lambda m: m["extract_config"].__setitem__(key, value)


FILE_ATTACKS = {
    "traversal": lambda d, s: _edit(d, lambda m: m["files"].__setitem__("../sentinel.txt", artefact.file_entry(s))),
    "absolute": lambda d, s: _edit(d, lambda m: m["files"].__setitem__(str(s), artefact.file_entry(s))),
    "model_symlink_out": lambda d, s: (
        (d / MODEL_FILE).unlink(),
        (d / MODEL_FILE).symlink_to(s),
        _edit(d, lambda m: m["files"].__setitem__(MODEL_FILE, artefact.file_entry(s))),
    ),
    "manifest_symlink": lambda d, s: (
        os.replace(d / MANIFEST, s.with_name("elsewhere.json")),
        (d / MANIFEST).symlink_to(s.with_name("elsewhere.json")),
    ),
    "tampered_model": lambda d, s: _flip_byte(d / MODEL_FILE),
    "tampered_metrics": lambda d, s: (d / METRICS_FILE).write_text((d / METRICS_FILE).read_text().replace("a", "b")),
    "model_unlisted": lambda d, s: _edit(d, lambda m: m["files"].pop(MODEL_FILE)),
}

FIELD_ATTACKS = {
    "classes": [
        lambda m: m.__setitem__("classes", ["a", "b", "zzz"]),
        lambda m: m.__setitem__("classes", "abc"),
        lambda m: m.__setitem__("classes", []),
        lambda m: m.__setitem__("classes", ["a", "a", "b"]),
        lambda m: m.__setitem__("classes", [1, 2, 3]),
    ],
    "label_type": [lambda m: m.__setitem__("label_type", "float"), lambda m: m.pop("label_type")],
    "dim": [
        lambda m: m.__setitem__("dim", "32"),
        lambda m: m.__setitem__("dim", -1),
        lambda m: m.__setitem__("dim", 64),
        lambda m: m.__setitem__("dim", True),
        lambda m: m.__setitem__("dim", 10**12),
    ],
    "column": [lambda m: m.__setitem__("column", 7), lambda m: m.pop("column")],
    "label_column": [lambda m: m.__setitem__("label_column", None)],
    "classifier": [lambda m: m.__setitem__("classifier", "os.system")],
    "extract_config": [
        lambda m: m.__setitem__("extract_config", "gpt2"),
        _setting("layers", ["2"]),
        _setting("layers", []),
        _setting("model", 5),
        _setting("pooling", "mean"),
        _setting("max_length", "9"),
        _setting("normalize", "yes"),
        _setting("surprise", 1),
        _setting("pooling", ["median"]),
        _setting("stride", -3),
    ],
    "features_meta": [lambda m: m.__setitem__("features_meta", [])],
}


def _assert_refused(model_dir: Path, sentinel: Path, features: Path, tmp_path: Path, match: str) -> None:
    with pytest.raises(InputError, match=match):
        load_model(model_dir)
    out = tmp_path / "predictions.parquet"
    result = run("predict", model_dir, features, "-o", out)
    assert result.exit_code == 3, result.output
    assert "internal error" not in result.output
    assert sentinel.read_text() == "untouched" and not out.exists()


@pytest.mark.parametrize("attack", sorted(FILE_ATTACKS))
def test_hostile_model_files_are_refused_with_exit_3(model_and_sentinel, _trained, tmp_path, attack):
    model_dir, sentinel = model_and_sentinel
    FILE_ATTACKS[attack](model_dir, sentinel)
    _assert_refused(model_dir, sentinel, _trained / "features.parquet", tmp_path, match=".")


@pytest.mark.parametrize("field, index", [(f, i) for f, changes in FIELD_ATTACKS.items() for i in range(len(changes))])
def test_hand_edited_manifest_fields_are_named_with_exit_3(model_and_sentinel, _trained, tmp_path, field, index):
    model_dir, sentinel = model_and_sentinel
    _edit(model_dir, FIELD_ATTACKS[field][index])
    _assert_refused(model_dir, sentinel, _trained / "features.parquet", tmp_path, match=f"'{field}'")


def test_a_model_of_the_older_format_says_train_again(model_and_sentinel, _trained, tmp_path):
    model_dir, sentinel = model_and_sentinel
    _edit(model_dir, lambda m: m.update(format_version=1, files={n: e["sha256"] for n, e in m["files"].items()}))
    _assert_refused(
        model_dir, sentinel, _trained / "features.parquet", tmp_path, match="older embedkit .* train it again"
    )


def test_hostile_clustering_and_probe_manifests_are_refused(two_features, tmp_path):
    from embedkit.probe import load_report

    out = tmp_path / "clusters"
    cluster_file(two_features[0], out, ClusterOptions(k=2, map="none"))
    consistent_clustering(out)
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("untouched")
    manifest = json.loads((out / "embedkit_clusters.json").read_text())
    for change, match in [
        (lambda m: m["files"].__setitem__("../sentinel.txt", artefact.file_entry(sentinel)), "plain names"),
        (lambda m: m.__setitem__("rows", 61), "'rows' says 61"),
        (lambda m: m.__setitem__("k", "2"), "'k'"),
        (lambda m: m.__setitem__("summary", "../sentinel.txt"), "'summary'"),
    ]:
        edited = json.loads(json.dumps(manifest))
        change(edited)
        (out / "embedkit_clusters.json").write_text(json.dumps(edited))
        with pytest.raises(InputError, match=match):
            load_clustering(out)
    (out / "embedkit_clusters.json").write_text(json.dumps(manifest))
    (out / "summary.json").write_text("{}")
    with pytest.raises(InputError, match="sha256|bytes"):
        load_clustering(out)
    with pytest.raises(InputError, match="not a complete embedkit probe report"):
        load_report(out)
    assert sentinel.read_text() == "untouched"


# ---------------------------------------------------------------------------------------------- races


def test_second_train_fails_at_once_while_the_first_works_then_waits_with_wait(two_features, tmp_path):
    first, second = two_features
    model_dir = tmp_path / "model"
    train(first, "label", model_dir, seed=1, options=FIXED_C)  # the old model: logreg on a/b/c
    gate = tmp_path / "gate-1"
    a = start(
        "train",
        second,
        "-y",
        "label",
        "-o",
        model_dir,
        "--overwrite",
        "-c",
        "knn",
        "--k-neighbors",
        3,
        gate=(gate, GATED_TRAIN),
    )
    try:
        assert wait_for_staging(model_dir, a)
        code, output = finish(start("train", first, "-y", "label", "-o", model_dir, "--overwrite", "-c", "ridge"))
        assert code == 7 and "--wait" in output, output
        assert a.poll() is None  # still held at its gate: the second writer failed without waiting for it
        assert consistent_model(model_dir) == ("logreg", ["a", "b", "c"])  # the old model is whole meanwhile
    finally:
        gate.touch()
        code, output = finish(a)
    assert code == 0, output
    assert consistent_model(model_dir) == ("knn", ["x", "y"])

    gate = tmp_path / "gate-2"
    a = start("train", first, "-y", "label", "-o", model_dir, "--overwrite", "-c", "logreg", gate=(gate, GATED_TRAIN))
    assert wait_for_staging(model_dir, a)
    b = start("train", second, "-y", "label", "-o", model_dir, "--overwrite", "-c", "ridge", "--wait")
    time.sleep(2)
    assert b.poll() is None  # blocked behind the first writer, not failed
    gate.touch()
    assert finish(a)[0] == 0 and finish(b)[0] == 0
    assert consistent_model(model_dir) == ("ridge", ["x", "y"])  # the waiting writer went second
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("trial", range(3))
def test_two_train_overwrite_runs_at_the_same_moment_never_mix(two_features, tmp_path, trial):
    first, second = two_features
    model_dir = tmp_path / "model"
    train(first, "label", model_dir, seed=1, options=FIXED_C)
    runs = {
        "knn": start("train", second, "-y", "label", "-o", model_dir, "--overwrite", "-c", "knn", "--k-neighbors", 3),
        "ridge": start("train", first, "-y", "label", "-o", model_dir, "--overwrite", "-c", "ridge"),
    }
    codes = {name: finish(proc)[0] for name, proc in runs.items()}
    assert sorted(codes.values()) in ([0, 0], [0, 7]), codes
    classifier, classes = consistent_model(model_dir)
    assert (classifier, classes) in (("knn", ["x", "y"]), ("ridge", ["a", "b", "c"]))
    if sorted(codes.values()) == [0, 7]:
        assert codes[classifier] == 0  # the model on disk is the survivor's, whole
    assert leftovers(tmp_path) == []


def test_second_cluster_fails_at_once_while_the_first_works_then_waits_with_wait(two_features, tmp_path):
    first, second = two_features
    out = tmp_path / "clusters"
    cluster_file(first, out, ClusterOptions(k=2, map="none"))
    gate = tmp_path / "gate-1"
    a = start("cluster", second, "-o", out, "--k", 3, "--overwrite", "-q", gate=(gate, GATED_CLUSTER))
    try:
        assert wait_for_staging(out, a)
        code, output = finish(start("cluster", first, "-o", out, "--k", 4, "--overwrite", "-q"))
        assert code == 7 and "--wait" in output, output
        assert a.poll() is None
        assert consistent_clustering(out) == (str(first), 2)
    finally:
        gate.touch()
        code, output = finish(a)
    assert code == 0, output
    assert consistent_clustering(out) == (str(second), 3)

    gate = tmp_path / "gate-2"
    a = start("cluster", first, "-o", out, "--k", 2, "--overwrite", "-q", gate=(gate, GATED_CLUSTER))
    assert wait_for_staging(out, a)
    b = start("cluster", second, "-o", out, "--k", 4, "--overwrite", "-q", "--wait")
    time.sleep(2)
    assert b.poll() is None
    gate.touch()
    assert finish(a)[0] == 0 and finish(b)[0] == 0
    assert consistent_clustering(out) == (str(second), 4)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("trial", range(2))
def test_two_cluster_overwrite_runs_at_the_same_moment_never_mix(two_features, tmp_path, trial):
    first, second = two_features
    out = tmp_path / "clusters"
    cluster_file(first, out, ClusterOptions(k=2, map="none"))
    runs = {
        (str(second), 3): start("cluster", second, "-o", out, "--k", 3, "--overwrite", "-q"),
        (str(first), 4): start("cluster", first, "-o", out, "--k", 4, "--overwrite", "-q"),
    }
    codes = {key: finish(proc)[0] for key, proc in runs.items()}
    assert sorted(codes.values()) in ([0, 0], [0, 7]), codes
    found = consistent_clustering(out)
    assert found in runs and codes[found] == 0
    assert leftovers(tmp_path) == []


def hold_lock(target: Path) -> subprocess.Popen:
    """Another process holding the lock of ``target`` until its stdin is closed (ready once it printed a line)."""
    code = (
        "import sys\nfrom embedkit import artefact\nwith artefact.output_lock(sys.argv[1]):\n"
        "    print('held', flush=True)\n    sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(target)], env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline() == "held\n"
    return holder


@pytest.mark.parametrize("stage", ["predict", "probe", "probe-features"])
def test_predict_and_probe_outputs_are_locked_and_wait(two_features, tiny_gpt2_shared, tmp_path, stage):
    first, _ = two_features
    model_dir = tmp_path / "model"
    train(first, "label", model_dir, seed=1, options=FIXED_C)
    if stage == "predict":
        target = tmp_path / "predictions.parquet"
        args = ["predict", model_dir, first, "-o", target]
    else:
        target = tmp_path / ("report" if stage == "probe" else "features-kept.parquet")
        args = [
            "probe",
            first.with_name(first.name + ".csv"),
            "-y",
            "label",
            "-o",
            tmp_path / "report",
            "--model",
            tiny_gpt2_shared,
            "--layers",
            "1",
            "--cv",
            2,
            "--save-features",
            tmp_path / "features-kept.parquet",
            "-q",
            "--device",
            "cpu",
        ]
    holder = hold_lock(target)
    try:
        code, output = finish(start(*args))
        assert code == 7 and "--wait" in output, output
        assert not target.exists() and not (tmp_path / "report").exists()
        waiting = start(*args, "--wait")
        time.sleep(1)
        assert waiting.poll() is None  # blocked on the lock
        holder.stdin.close()
        code, output = finish(waiting)
        assert code == 0, output
    finally:
        holder.kill()
        holder.wait(30)
    assert target.exists() and leftovers(tmp_path) == []


def test_probe_features_saved_inside_the_report_become_part_of_it(two_features, tiny_gpt2_shared, tmp_path):
    from embedkit.probe import load_report
    from embedkit.store import open_features

    first, _ = two_features
    report = tmp_path / "report"
    args = [
        "probe",
        first.with_name(first.name + ".csv"),
        "-y",
        "label",
        "-o",
        report,
        "--model",
        tiny_gpt2_shared,
        "--layers",
        "1",
        "--cv",
        2,
        "-q",
        "--device",
        "cpu",
    ]
    assert run(*args, "--save-features", report / "features.parquet").exit_code == 0
    loaded = load_report(report)
    assert "features.parquet" in loaded.files and open_features(loaded.files["features.parquet"]).num_rows == 60
    result = run(*args, "--overwrite", "--save-features", report / "sub" / "features.parquet")
    assert result.exit_code == 2 and "directly in the report directory" in result.output
    result = run(*args, "--overwrite", "--save-features", report / "probe.json")
    assert result.exit_code == 2 and "report's own files" in result.output
    assert load_report(report).files.keys() == loaded.files.keys()  # refused runs left the report as it was


# ---------------------------------------------------------------------------------------------- kills


def _kill_at_increasing_moments(target: Path, reset, args: tuple, old, new, trials: int = 5) -> list:
    """SIGKILL a real ``args`` run at increasing moments after it took the lock, from at once to past its end.

    ``reset`` writes the old artefact again (and, being the next writer, must clear what the kill left). After
    every kill the artefact read back is the old one or the new one, whole; never a mix, never missing.
    """
    reset()
    timing = start(*args)
    assert wait_for_staging(target, timing)
    began = time.monotonic()
    assert finish(timing)[0] == 0
    work = time.monotonic() - began  # from the lock to the end of one run
    outcomes = []
    rng = random.Random(trials)
    for trial in range(trials):
        reset()
        assert leftovers(target.parent) == []  # the writer after a kill removed what the kill left
        proc = start(*args)
        assert wait_for_staging(target, proc)
        # 0 (at once), then random moments in successive slices of the run, the last reaching past its end.
        time.sleep(work * 1.2 * (trial - 1 + rng.random()) / (trials - 1) if trial else 0)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        outcomes.append(_old_or_new(old, new))
    assert outcomes[0] == "old"  # killed as soon as it held the lock: the switch cannot have happened
    assert run(*args).exit_code == 0
    assert new() == "new" and leftovers(target.parent) == []
    return outcomes


def _old_or_new(old, new) -> str:
    try:
        return old()
    except AssertionError:
        return new()


def test_kill_during_train_overwrite_leaves_the_old_or_the_new_model(two_features, tmp_path):
    first, second = two_features
    model_dir = tmp_path / "model"

    def old():
        assert consistent_model(model_dir) == ("logreg", ["a", "b", "c"])
        return "old"

    def new():
        assert consistent_model(model_dir) == ("knn", ["x", "y"])
        return "new"

    _kill_at_increasing_moments(
        model_dir,
        lambda: train(first, "label", model_dir, seed=1, options=FIXED_C, overwrite=True),
        ("train", second, "-y", "label", "-o", model_dir, "--overwrite", "-c", "knn", "--k-neighbors", 3),
        old,
        new,
    )


def test_kill_during_cluster_overwrite_leaves_the_old_or_the_new_clustering(two_features, tmp_path):
    first, second = two_features
    out = tmp_path / "clusters"

    def old():
        assert consistent_clustering(out) == (str(first), 2)
        return "old"

    def new():
        assert consistent_clustering(out) == (str(second), 3)
        return "new"

    _kill_at_increasing_moments(
        out,
        lambda: cluster_file(first, out, ClusterOptions(k=2, map="none"), overwrite=True),
        ("cluster", second, "-o", out, "--k", 3, "--overwrite", "-q"),
        old,
        new,
    )


# ---------------------------------------------------------------------------------------------- NaN and infinity


def test_nan_and_inf_vectors_are_skipped_and_counted_by_train_and_kept_unpredicted_by_predict(features_file, tmp_path):
    rng = np.random.default_rng(0)
    labels = ["a", "b"] * 20
    vectors = rng.normal(size=(40, 32)) + np.where(np.array(labels)[:, None] == "a", 2.0, -2.0)
    vectors[3, 5], vectors[10, 0], vectors[11, :] = np.nan, np.inf, -np.inf
    path = with_vectors(features_file, vectors, labels, "nan.parquet")
    result = run("train", path, "-y", "label", "-o", tmp_path / "m")
    assert result.exit_code == 0, result.output
    assert "37 rows, 2 classes" in result.output and "skipped 3 with NaN/inf values" in result.output
    metrics = json.loads((tmp_path / "m" / METRICS_FILE).read_text())
    assert metrics["skipped_non_finite"] == 3 and metrics["rows_used"] == 37
    consistent_model(tmp_path / "m")

    result = run("predict", tmp_path / "m", path, "-o", tmp_path / "p.jsonl")
    assert result.exit_code == 0, result.output
    assert "37 predicted" in result.output and "3 kept with no prediction (3 non_finite)" in result.output
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [i for i, r in enumerate(rows) if r["prediction"] is None] == [3, 10, 11]
    assert {rows[i]["status"] for i in (3, 10, 11)} == {"non_finite"} and rows[0]["status"] == "ok"
    with pytest.raises(InputError, match="NaN or infinity"):
        load_model(tmp_path / "m").predict_vectors(vectors[:12])


def test_all_vectors_non_finite_is_a_clean_input_error(features_file, tmp_path):
    path = with_vectors(features_file, np.full((12, 32), np.nan), ["a", "b"] * 6, "allnan.parquet")
    result = run("train", path, "-y", "label", "-o", tmp_path / "m")
    assert result.exit_code == 3 and "12 with NaN/inf" in result.output
    result = run("cluster", path, "-o", tmp_path / "c", "--k", 2)
    assert result.exit_code == 3 and "12 with NaN/inf" in result.output
    assert not (tmp_path / "m").exists() and not (tmp_path / "c").exists() and leftovers(tmp_path) == []


def test_cluster_skips_and_counts_nan_and_inf_rows(features_file, tmp_path):
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(30, 32))
    vectors[[0, 7]] = np.nan
    vectors[9, 3] = np.inf
    path = with_vectors(features_file, vectors, ["a", "b", "c"] * 10, "nan-cluster.parquet")
    result = run("cluster", path, "-o", tmp_path / "c", "--k", 2, "--json", "-q")
    assert result.exit_code == 0, result.output
    loaded = load_clustering(tmp_path / "c")
    assert loaded.summary["skipped_rows"] == {"null_embedding": 0, "non_finite": 3} and loaded.rows == 27


def test_outputs_of_an_earlier_embedkit_are_replaced_only_with_overwrite_and_a_users_files_never(
    features_file, tmp_path
):
    path = features_file(n=20)
    out = tmp_path / "clusters"
    out.mkdir()
    for name in ("clusters.parquet", "map.png", "summary.json"):  # what cluster wrote before manifests
        (out / name).write_text("old")
    result = run("cluster", path, "-o", out, "--k", 2, "-q")
    assert result.exit_code == 5 and "earlier embedkit output" in result.output and "--overwrite" in result.output
    assert run("cluster", path, "-o", out, "--k", 2, "-q", "--overwrite").exit_code == 0
    assert load_clustering(out).k == 2
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.json").write_text("old")
    (mine / "notes.txt").write_text("precious")
    result = run("cluster", path, "-o", mine, "--k", 2, "-q", "--overwrite")
    assert result.exit_code == 5 and "refusing" in result.output
    assert (mine / "notes.txt").read_text() == "precious"


def test_kill_during_probe_overwrite_leaves_the_old_or_the_new_report(tiny_gpt2_shared, write_csv, tmp_path):
    from conftest import sample_texts

    from embedkit import ExtractConfig
    from embedkit.probe import load_report, probe_file

    texts = sample_texts(40, seed=11)
    source = write_csv([{"text": t, "label": "ab"[i % 2]} for i, t in enumerate(texts)], name="labelled.csv")
    out = tmp_path / "report"

    def shape() -> tuple[int, ...]:
        report = load_report(out)  # every file verified against the manifest
        return tuple(sorted({row["layer"] for row in report.summary["table"]}))

    def old():
        assert shape() == (1,)
        return "old"

    def new():
        assert shape() == (0, 1, 2)
        return "new"

    config = ExtractConfig(model=tiny_gpt2_shared)
    _kill_at_increasing_moments(
        out,
        lambda: probe_file(source, "label", out, config, layers=[1], cv=2, overwrite=True, progress=False),
        ("probe", source, "-y", "label", "-o", out, "--model", tiny_gpt2_shared, "--cv", 2, "--overwrite", "-q"),
        old,
        new,
        trials=4,
    )
