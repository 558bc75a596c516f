"""One writer per output: concurrent `embed --overwrite` runs of one output never both succeed, never mix rows,
and `--wait` runs them in turn; a kill -9 during `--overwrite` leaves the old output or the new one, whole.

These run real processes (the lock is an OS lock between processes). Slow merges are simulated by a wrapper that
sleeps inside PartWriter.finish, so the two runs overlap whatever the start-up jitter of the machine.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import sample_texts

from embedkit.cli import cli

ROWS = 60
SLOW_FINISH = """
import sys, time
import embedkit.parts as parts
real_finish = parts.PartWriter.finish
def slow_finish(self, meta):
    time.sleep(float(sys.argv[1]))  # a slow merge, under the lock: the other run surely overlaps this one
    return real_finish(self, meta)
parts.PartWriter.finish = slow_finish
from embedkit.cli import cli
cli(sys.argv[2:], prog_name="embedkit")
"""


@pytest.fixture
def inputs(tmp_path):
    paths = {}
    for name in ("a", "b"):
        path = tmp_path / f"{name}.csv"
        lines = [f"{name}-{i},{t}" for i, t in enumerate(sample_texts(ROWS, seed=ord(name)))]
        path.write_text("id,text\n" + "\n".join(lines) + "\n", encoding="utf-8")
        paths[name] = path
    return paths


def _env():
    root = str(Path(__file__).resolve().parents[1])
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
    }


def _embed_args(source, out, model, *extra):
    return ["embed", str(source), "-o", str(out), "-m", model, "--id-column", "id", "-q", "--part-rows", "10", *extra]


def _start(tmp_path, sleep, *args):
    script = tmp_path / "slow_finish.py"
    script.write_text(SLOW_FINISH)
    return subprocess.Popen(
        [sys.executable, str(script), str(sleep), *args],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _ids(out):
    return pq.read_table(out, columns=["id"]).column("id").to_pylist()


def _expected(name):
    return [f"{name}-{i}" for i in range(ROWS)]


def test_two_overwrites_of_one_output_never_both_succeed(inputs, tiny_gpt2_shared, tmp_path):
    out = tmp_path / "out.parquet"
    for trial in range(2):
        procs = [_start(tmp_path, 5, *_embed_args(inputs[name], out, tiny_gpt2_shared, "--overwrite")) for name in "ab"]
        results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
        codes = sorted(code for code, _, _ in results)
        assert codes == [0, 7], results
        loser = next(err for code, _, err in results if code == 7)
        assert "being written by another embedkit process" in loser and "--wait" in loser
        assert "Traceback" not in loser
        assert _ids(out) in (_expected("a"), _expected("b")), f"trial {trial}: rows of both inputs mixed"


def test_wait_runs_the_writers_in_turn_and_the_second_wins(inputs, tiny_gpt2_shared, tmp_path):
    out = tmp_path / "out.parquet"
    first = _start(tmp_path, 3, *_embed_args(inputs["a"], out, tiny_gpt2_shared, "--overwrite", "--wait"))
    deadline = time.monotonic() + 120
    while not (tmp_path / "out.parquet.partial").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # the partial directory exists only under the lock: the first run holds it now
    second = _start(tmp_path, 0, *_embed_args(inputs["b"], out, tiny_gpt2_shared, "--overwrite", "--wait"))
    results = [(p.wait(timeout=300), *p.communicate()) for p in (first, second)]
    assert [code for code, _, _ in results] == [0, 0], results
    assert all(f"{ROWS} rows" in err for _, _, err in results)
    assert _ids(out) == _expected("b")


def test_a_second_writer_fails_at_once_in_process(inputs, tiny_gpt2_shared, tmp_path):
    from embedkit.artefact import output_lock

    out = tmp_path / "out.parquet"
    with output_lock(out):
        started = time.monotonic()
        result = CliRunner().invoke(cli, _embed_args(inputs["a"], out, tiny_gpt2_shared))
        assert result.exit_code == 7 and "pass --wait" in result.output
        assert time.monotonic() - started < 5  # before any model is loaded
    assert not out.exists() and not (tmp_path / "out.parquet.partial").exists()
    assert CliRunner().invoke(cli, _embed_args(inputs["a"], out, tiny_gpt2_shared)).exit_code == 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_during_overwrite_keeps_the_old_output_or_the_new_one(inputs, tiny_gpt2_shared, tmp_path, seed):
    out = tmp_path / "out.parquet"
    assert CliRunner().invoke(cli, _embed_args(inputs["a"], out, tiny_gpt2_shared)).exit_code == 0
    args = [sys.executable, "-m", "embedkit", *_embed_args(inputs["b"], out, tiny_gpt2_shared, "--overwrite")]
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (tmp_path / "out.parquet.partial").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # the run holds the lock and is writing parts: kill it at a random instant from here on
    time.sleep(random.Random(seed).uniform(0, 1.5))
    proc.kill()
    proc.wait()
    assert _ids(out) in (_expected("a"), _expected("b"))  # whole, never a mix or a torn file
    again = ["--resume"] if (tmp_path / "out.parquet.partial").exists() else []
    rerun = CliRunner().invoke(cli, _embed_args(inputs["b"], out, tiny_gpt2_shared, "--overwrite", *again))
    assert rerun.exit_code == 0, rerun.output  # the OS dropped the killed run's lock
    assert _ids(out) == _expected("b")
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.parquet.") and p.suffix == ".tmp"]
    assert not leftovers and not (tmp_path / "out.parquet.partial").exists()
