"""Cold start (#23): commands that need no model never import torch or transformers; a one-query search imports
neither pandas nor pyarrow.dataset; a model loads with the cyclic collector paused and a CLI process skips the
final collection at exit.

The import checks run the real CLI in a fresh interpreter and read ``sys.modules`` after every command, so an import
chain that pulls torch in (a module-level import, a library that imports it for its own reasons) fails here
whichever module it hides in. The last step runs a command that does load a model, to prove the probe sees it.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from embedkit.light_imports import arrow_positions

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers")
# Imported by nothing a one-query search needs: pyarrow.dataset (pq.read_table) imports pandas, and pyarrow's
# pandas shim imports it on the first pa.array(): 0.2-0.3 s each time (#23).
NOT_FOR_SEARCH = ("pandas", "pyarrow.dataset")

# Runs the commands given as JSON in argv[1] one after another in this one process; prints, per command, its exit
# code and which heavy modules were imported by then.
PROBE = """
import json, sys
from embedkit.cli import cli
report = []
for args in json.loads(sys.argv[1]):
    try:
        cli.main(args=args, prog_name="embedkit", standalone_mode=False)
        code = 0
    except SystemExit as exc:
        code = exc.code
    except Exception as exc:
        code = f"{type(exc).__name__}: {exc}"
    report.append({"args": args, "code": code, "heavy": [m for m in HEAVY if m in sys.modules],
                   "also": [m for m in ALSO if m in sys.modules]})
print("REPORT" + json.dumps(report))
""".replace("HEAVY", repr(HEAVY)).replace("ALSO", repr(NOT_FOR_SEARCH))


def run_commands(commands: list[list[str]], cwd: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EMBEDKIT_CACHE_DIR": str(cwd / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(commands)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("REPORT"))
    return json.loads(line.removeprefix("REPORT"))


@pytest.fixture
def artefacts(features_file, tmp_path):
    """A features file and a classifier trained on it, both made in this (torch-importing) test process."""
    from embedkit.classify import train

    features = features_file(n=40)
    train(features, "label", tmp_path / "model", cv=2)
    return features, tmp_path / "model"


def test_commands_without_a_model_never_import_torch_or_transformers(artefacts, tmp_path):
    features, model = artefacts
    commands = [
        ["--help"],
        ["info", str(features)],
        ["predict", str(model), str(features), "-o", "predictions.csv"],
        ["predict", str(model), str(features), "-o", "quiet.csv", "--quiet"],
        ["train", str(features), "--label-column", "label", "-o", "retrained", "--cv", "2"],
        ["cluster", str(features), "-o", "clusters", "--quiet"],
        ["index", "build", str(features), "-o", "index", "--quiet"],
        ["index", "build", str(features), "-o", "index2"],
    ]
    report = run_commands(commands, tmp_path)
    for step in report:
        assert step["code"] == 0, step
        assert step["heavy"] == [], f"`embedkit {' '.join(step['args'])}` imported {step['heavy']}"
    assert (tmp_path / "predictions.csv").stat().st_size > 0
    assert (tmp_path / "index").is_dir() and (tmp_path / "clusters").is_dir()


def test_the_probe_sees_a_command_that_loads_a_model(features_file, tmp_path):
    # Without this positive control, a probe that could not see torch would pass the test above vacuously.
    index = tmp_path / "index"
    from embedkit.index import build_index

    build_index(features_file(n=20), index, progress=False)
    (step,) = run_commands([["search", str(index), "a query", "-k", "2"]], tmp_path)
    assert step["code"] == 0, step
    assert step["heavy"] == list(HEAVY)
    # ... and a one-query search reads the index and shows its hits without pandas (nor the dataset API).
    assert step["also"] == [], f"a one-query search imported {step['also']}"


def test_skops_is_imported_without_torch_and_still_trusts_sklearn(tmp_path):
    script = """
import sys
from embedkit.light_imports import skops_io
sio = skops_io()
assert "torch" not in sys.modules, "skops_io imported torch"
from skops.io._trusted_types import SKLEARN_ESTIMATOR_TYPE_NAMES as names
assert "sklearn.linear_model._logistic.LogisticRegression" in names, names[:5]
assert "sklearn.pipeline.Pipeline" in names
# the wrapper it skipped still imports when someone really uses it
import sklearn.externals.array_api_compat.torch
print("ok", len(names))
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok")


def test_lazy_command_table_matches_the_modules_that_define_them():
    # LAZY_COMMANDS names, per command, the module that registers it; a wrong or missing entry would hide a
    # command from `embedkit --help` or load the wrong module. Load every module, then compare with what registered.
    script = """
import importlib, json, pkgutil, sys
import embedkit.cli as pkg
from embedkit.cli import LAZY_COMMANDS, cli
before = sorted(m for m in sys.modules if m.startswith("embedkit.cli."))
for info in pkgutil.iter_modules(pkg.__path__):
    importlib.import_module(f"embedkit.cli.{info.name}")
print(json.dumps({"before": before, "lazy": LAZY_COMMANDS,
                  "real": {n: c.callback.__module__.rsplit(".", 1)[1] for n, c in cli.commands.items()}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout)
    assert found["before"] == [], "importing embedkit.cli loaded command modules eagerly"
    assert found["lazy"] == found["real"]


def test_a_command_loads_only_its_own_module_and_help_lists_every_command():
    from click.testing import CliRunner

    script = """
import json, sys
from click.testing import CliRunner
from embedkit.cli import cli
result = CliRunner().invoke(cli, ["info", "--help"])
print(json.dumps({"code": result.exit_code, "loaded": sorted(m for m in sys.modules if m.startswith("embedkit.cli."))}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout)
    assert found == {"code": 0, "loaded": ["embedkit.cli.embed"]}

    from embedkit.cli import LAZY_COMMANDS, cli

    listing = CliRunner().invoke(cli, ["--help"]).output
    for name in LAZY_COMMANDS:
        assert f"\n  {name} " in listing, listing


@pytest.mark.parametrize(
    "positions",
    [np.array([5, 0, 3]), np.array([], dtype=np.int64), np.arange(10)[::3], np.array([2, 1], dtype=np.int32)],
    ids=["plain", "empty", "strided", "int32"],
)
def test_arrow_positions_takes_the_same_rows_as_pa_array(positions):
    table = pa.table({"id": pa.array(range(10)), "text": pa.array([f"row {i}" for i in range(10)])})
    wrapped = arrow_positions(positions)
    assert wrapped.type == pa.int64()
    assert wrapped.to_pylist() == [int(p) for p in positions]
    assert table.take(wrapped).equals(table.take(pa.array(positions)))


def test_arrow_positions_does_not_import_pandas():
    script = """
import sys, numpy as np, pyarrow as pa
from embedkit.light_imports import arrow_positions
table = pa.ipc.open_stream(sys.stdin.buffer).read_all()
print(table.take(arrow_positions(np.array([1, 0]))).column("id").to_pylist(), "pandas" in sys.modules)
"""
    sink = pa.BufferOutputStream()
    table = pa.table({"id": pa.array([7, 8, 9])})
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=sink.getvalue().to_pybytes(),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.decode().split() == ["[8,", "7]", "False"]


def test_model_loads_with_the_collector_paused_and_puts_it_back(tiny_gpt2, monkeypatch):
    from embedkit.config import ExtractConfig
    from embedkit.errors import ModelLoadError
    from embedkit.extract import model as model_module

    seen = []
    real = model_module._from_pretrained

    def spy(loader, name, **kwargs):
        seen.append((getattr(loader, "__name__", str(loader)), gc.isenabled()))
        return real(loader, name, **kwargs)

    monkeypatch.setattr(model_module, "_from_pretrained", spy)
    assert gc.isenabled()
    loaded = model_module.load_model(ExtractConfig(model=tiny_gpt2), device="cpu")
    assert loaded.n_layers == 2
    assert seen and all(not enabled for _, enabled in seen), seen  # config and tokenizer loaded with it paused
    assert gc.isenabled()
    with pytest.raises(ModelLoadError):
        model_module.load_model(ExtractConfig(model=str(Path(tiny_gpt2) / "missing")), device="cpu")
    assert gc.isenabled()  # back on after a failed load too
    gc.disable()
    try:
        model_module.load_model(ExtractConfig(model=tiny_gpt2), device="cpu")
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable()


def test_a_cli_process_freezes_its_objects_before_the_final_collection(features_file, tmp_path):
    # atexit runs handlers last-registered first: this one, registered before the CLI runs, sees what the CLI's
    # handler did. Two commands in one process register it once.
    script = """
import atexit, gc, sys
atexit.register(lambda: print("frozen", gc.get_freeze_count() > 0, flush=True))
from embedkit.cli import cli
before = gc.get_freeze_count()
for _ in range(2):
    try:
        cli.main(args=["info", sys.argv[1]], prog_name="embedkit", standalone_mode=False)
    except SystemExit:
        pass
print("during", before, gc.get_freeze_count(), flush=True)
"""
    done = subprocess.run(
        [sys.executable, "-c", script, str(features_file(n=5))],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [x for x in done.stdout.splitlines() if x.startswith(("during", "frozen"))]
    assert lines == ["during 0 0", "frozen True"], done.stdout
