"""Resumable embedding: killed runs finish on --resume with output equal to an uninterrupted run."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import sample_texts

from embedkit import ExtractConfig, InputError
from embedkit.cli import cli
from embedkit.embed import embed_file
from embedkit.parts import PartWriter

PART_ROWS = 40


@pytest.fixture
def corpus(write_csv):
    texts = sample_texts(400, seed=9, max_words=30)
    texts[17] = ""  # a bad row must survive the resume too
    return write_csv([{"doc": f"d{i}", "text": t} for i, t in enumerate(texts)], "corpus.csv")


@pytest.fixture
def reference(corpus, tiny_gpt2_shared, tmp_path):
    out = tmp_path / "reference.parquet"
    embed_file(
        corpus,
        out,
        ExtractConfig(model=tiny_gpt2_shared),
        id_column="doc",
        device="cpu",
        progress=False,
        part_rows=PART_ROWS,
    )
    return pq.read_table(out)


def assert_same_output(path, reference):
    table = pq.read_table(path)
    assert table.column("id").to_pylist() == reference.column("id").to_pylist()
    assert table.column("status").to_pylist() == reference.column("status").to_pylist()
    dim = reference.schema.field("embedding").type.list_size
    got, want = (
        [[np.nan] * dim if v is None else v for v in t.column("embedding").to_pylist()] for t in (table, reference)
    )
    np.testing.assert_allclose(np.array(got), np.array(want), atol=1e-5, equal_nan=True)
    assert table.schema.metadata[b"embedkit"]


def cli_args(corpus, out, model, *extra):
    return [
        "embed",
        str(corpus),
        "-o",
        str(out),
        "-m",
        model,
        "--id-column",
        "doc",
        "--part-rows",
        str(PART_ROWS),
        "-q",
        *extra,
    ]


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing on the way catches it."""


def crash_before_the_merge(corpus, out, model, monkeypatch):
    """Run the CLI until every part is committed and die there, leaving a whole partial run to resume."""
    monkeypatch.setattr(PartWriter, "finish", lambda self, meta: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        CliRunner().invoke(cli, cli_args(corpus, out, model), catch_exceptions=False)
    monkeypatch.undo()


def test_resume_after_a_crash_equals_an_uninterrupted_run(corpus, reference, tiny_gpt2_shared, tmp_path, monkeypatch):
    out = tmp_path / "out.parquet"
    real_commit, commits = PartWriter.commit, []

    def dying_commit(self, table):
        if len(commits) == 4:
            raise Crash
        commits.append(1)
        real_commit(self, table)

    monkeypatch.setattr(PartWriter, "commit", dying_commit)
    with pytest.raises(Crash):
        CliRunner().invoke(cli, cli_args(corpus, out, tiny_gpt2_shared), catch_exceptions=False)
    monkeypatch.setattr(PartWriter, "commit", real_commit)
    assert not out.exists() and (tmp_path / "out.parquet.partial" / "manifest.json").exists()

    again = CliRunner().invoke(cli, cli_args(corpus, out, tiny_gpt2_shared))
    assert again.exit_code == 5 and "pass --resume to continue it or --overwrite" in again.output

    result = CliRunner().invoke(cli, cli_args(corpus, out, tiny_gpt2_shared, "--resume"))
    assert result.exit_code == 0, result.output
    assert "160 resumed from an earlier run" in result.output and "400 rows" in result.output
    assert_same_output(out, reference)
    assert not (tmp_path / "out.parquet.partial").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        # The refusal names the option that changed and both values, so the user knows what to put back.
        (["--pooling", "last"], "different settings (pooling: ['mean'] -> ['last'])"),
        (["--layer", "1"], "different settings (layers: ["),
        (
            ["--text-column", "doc"],
            "different columns (columns.keep: ['text'] -> ['doc']; columns.text: 'text' -> 'doc')",
        ),
    ],
)
def test_resume_with_other_settings_is_refused(corpus, tiny_gpt2_shared, tmp_path, monkeypatch, change, message):
    out = tmp_path / "out.parquet"
    crash_before_the_merge(corpus, out, tiny_gpt2_shared, monkeypatch)
    result = CliRunner().invoke(cli, cli_args(corpus, out, tiny_gpt2_shared, "--resume", *change))
    assert result.exit_code == 6 and message in result.output and "Traceback" not in result.output


def test_resume_after_the_input_changed_is_refused(corpus, tiny_gpt2_shared, tmp_path, monkeypatch):
    out = tmp_path / "out.parquet"
    crash_before_the_merge(corpus, out, tiny_gpt2_shared, monkeypatch)
    with corpus.open("a") as f:
        f.write("d999,one more row\n")
    result = CliRunner().invoke(cli, cli_args(corpus, out, tiny_gpt2_shared, "--resume"))
    assert result.exit_code == 6 and f"different input (input {corpus.resolve()} changed)" in result.output


def test_disk_full_keeps_committed_parts_and_resume_finishes(
    corpus, reference, tiny_gpt2_shared, tmp_path, monkeypatch
):
    import embedkit.store as store

    out = tmp_path / "out.parquet"
    real_write, calls = store.pq.write_table, []

    def filling_disk(table, where, *a, **k):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(table, where, *a, **k)

    monkeypatch.setattr(store.pq, "write_table", filling_disk)
    result = CliRunner().invoke(cli, cli_args(corpus, out, tiny_gpt2_shared))
    assert result.exit_code == 5 and "disk full" in result.output and "Traceback" not in result.output
    assert not out.exists()
    assert not [p for p in (tmp_path / "out.parquet.partial").iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert CliRunner().invoke(cli, cli_args(corpus, out, tiny_gpt2_shared, "--resume")).exit_code == 0
    assert_same_output(out, reference)


def test_overwrite_discards_a_partial_run(corpus, reference, tiny_gpt2_shared, tmp_path, monkeypatch):
    out = tmp_path / "out.parquet"
    crash_before_the_merge(corpus, out, tiny_gpt2_shared, monkeypatch)
    result = CliRunner().invoke(cli, cli_args(corpus, out, tiny_gpt2_shared, "--overwrite"))
    assert result.exit_code == 0 and "resumed" not in result.output
    assert_same_output(out, reference)


def test_resume_with_nothing_to_resume_just_runs(corpus, reference, tiny_gpt2_shared, tmp_path):
    out = tmp_path / "out.parquet"
    assert CliRunner().invoke(cli, cli_args(corpus, out, tiny_gpt2_shared, "--resume")).exit_code == 0
    assert_same_output(out, reference)


def _committed_rows(partial) -> int:
    try:
        return sum(p["rows"] for p in json.loads((partial / "manifest.json").read_text())["parts"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_sigkill_at_a_random_moment_then_resume(corpus, reference, tiny_gpt2_shared, tmp_path, seed):
    """Fault injection: a real process killed with SIGKILL mid-run, then the same command with --resume.

    The kill waits for a random number of committed parts (0 up to all 10, the last case landing in the final
    merge) plus a random delay, so it hits part writes, manifest updates and the merge, not just start-up.
    """
    out, partial = tmp_path / "out.parquet", tmp_path / "out.parquet.partial"
    args = [sys.executable, "-m", "embedkit", *cli_args(corpus, out, tiny_gpt2_shared, "--resume")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(seed)
    target_rows = rng.randint(0, 400 // PART_ROWS) * PART_ROWS
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while proc.poll() is None and _committed_rows(partial) < target_rows and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(rng.uniform(0, 0.3))
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    if killed:
        # Only the merge's final rename makes OUT; after it the partial run is either whole or renamed away.
        assert not out.exists() or not partial.exists() or _committed_rows(partial) == 400
        # The resume runs in this process: the kill needs a real process, the resume does not (a fresh interpreter
        # paid the torch import again, seconds per seed on a busy machine).
        resumed = CliRunner().invoke(cli, cli_args(corpus, out, tiny_gpt2_shared, "--resume"))
        assert resumed.exit_code == 0, resumed.output
    assert_same_output(out, reference)
    assert not partial.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".trash"))]
    assert leftovers == [], leftovers


def test_resume_after_the_merge_finds_the_job_done(corpus, reference, tiny_gpt2_shared, tmp_path):
    """A kill between the output's rename and the partial directory's removal: --resume has nothing left to do."""
    out = tmp_path / "out.parquet"
    assert CliRunner().invoke(cli, cli_args(corpus, out, tiny_gpt2_shared)).exit_code == 0
    (tmp_path / "out.parquet.partial.trash").mkdir()  # what a kill during the clean-up leaves
    before = out.stat().st_mtime_ns
    result = CliRunner().invoke(cli, cli_args(corpus, out, tiny_gpt2_shared, "--resume"))
    assert result.exit_code == 0, result.output
    assert "already complete: nothing left to embed" in result.output and "tokens/s" not in result.output
    assert out.stat().st_mtime_ns == before and not (tmp_path / "out.parquet.partial.trash").exists()
    assert_same_output(out, reference)
    # Another job's output is still protected: different settings with --resume refuse to touch it.
    other = CliRunner().invoke(cli, cli_args(corpus, out, tiny_gpt2_shared, "--resume", "--layer", "1"))
    assert other.exit_code == 5 and "exists" in other.output


def test_resume_after_the_model_files_changed_is_refused(corpus, tiny_gpt2, tmp_path, monkeypatch):
    # Same --model path, other weights (a checkpoint re-saved in place): vectors of two models must not mix.
    out = tmp_path / "out.parquet"
    crash_before_the_merge(corpus, out, tiny_gpt2, monkeypatch)
    weights = Path(tiny_gpt2) / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    result = CliRunner().invoke(cli, cli_args(corpus, out, tiny_gpt2, "--resume"))
    assert result.exit_code == 6, result.output
    assert f"different model_files (model file {weights.resolve()} changed)" in result.output


@pytest.mark.parametrize(
    "error, commits, partial_kept",
    [
        (OSError("disk full (simulated)"), 1, True),  # resumable: the committed part is kept
        (OSError("disk full (simulated)"), 0, False),  # nothing committed: nothing to resume
        (InputError("corrupt data (simulated)"), 1, False),  # the input is at fault: resuming cannot help
    ],
)
def test_parts_are_kept_only_where_resume_can_use_them(tmp_path, error, commits, partial_kept):
    """The rule both engines share (local and Ray) for what a failed run leaves behind."""
    import pyarrow as pa

    writer = PartWriter(tmp_path / "out.parquet", {"job": 1})
    with pytest.raises(type(error)), writer.abandoned_on_failure():
        for _ in range(commits):
            writer.commit(pa.table({"id": [1, 2]}))
        raise error
    assert writer.partial.exists() == partial_kept
