"""Cold start (#23): commands that need no model never import torch or transformers.

Each check runs the real CLI in a fresh interpreter and reads ``sys.modules`` after every command, so an import
chain that pulls torch in (a module-level import, a library that imports it for its own reasons) fails here
whichever module it hides in. The last step runs a command that does load a model, to prove the probe sees it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers")

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
    report.append({"args": args, "code": code, "heavy": [m for m in HEAVY if m in sys.modules]})
print("REPORT" + json.dumps(report))
""".replace("HEAVY", repr(HEAVY))


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
