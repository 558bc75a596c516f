"""A sharded dataset written by the local engine, and every stage reading it as it reads one features file."""

from __future__ import annotations

import json
import os
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

from embedkit import ExtractConfig
from embedkit.cli import cli
from embedkit.dataset import DatasetWriter, is_dataset, read_manifest
from embedkit.embed import embed_file
from embedkit.errors import ConfigError
from embedkit.store import ShardedFeatures, open_features

SHARD_ROWS = 13
N = 60


@pytest.fixture
def corpus(write_csv):
    texts = sample_texts(N, seed=5, max_words=25)
    texts[20] = ""  # a bad row: kept with a status in both outputs
    rows = [{"doc": f"d{i}", "text": t, "label": "ab"[i % 2]} for i, t in enumerate(texts)]
    return write_csv(rows, "corpus.csv")


def _embed(corpus, out, model, **kwargs):
    return embed_file(
        corpus,
        out,
        ExtractConfig(model=model),
        id_column="doc",
        keep=("label",),
        device="cpu",
        progress=False,
        **kwargs,
    )


@pytest.fixture
def single(corpus, tiny_gpt2_shared, tmp_path):
    out = tmp_path / "single.parquet"
    _embed(corpus, out, tiny_gpt2_shared, part_rows=SHARD_ROWS)
    return out


@pytest.fixture
def dataset(corpus, tiny_gpt2_shared, tmp_path):
    out = tmp_path / "ds"
    summary = _embed(corpus, out, tiny_gpt2_shared, shard_rows=SHARD_ROWS)
    assert summary.rows == N and summary.bad_rows == {"empty": 1}
    return out


def assert_same_rows(path, reference: Path):
    got, want = pq.read_table(path), pq.read_table(reference)
    for name in ("id", "label", "status", "n_tokens"):
        assert got.column(name).to_pylist() == want.column(name).to_pylist(), name
    a, b = open_features(path).load(), open_features(reference).load()
    np.testing.assert_allclose(a[0], b[0], atol=1e-5)
    assert a[1].to_pylist() == b[1].to_pylist() and a[2] == b[2] == 1


def test_local_engine_writes_a_dataset_equal_to_a_single_file_run(dataset, single):
    assert is_dataset(dataset)
    manifest = read_manifest(dataset)
    assert [s.rows for s in manifest.shards] == [13, 13, 13, 13, 8]
    assert manifest.features["config"] == open_features(single).meta["config"]
    assert_same_rows(dataset, single)
    assert isinstance(open_features(dataset), ShardedFeatures)


def test_trailing_slash_makes_a_dataset_and_shard_rows_must_agree(corpus, single, tiny_gpt2_shared, tmp_path):
    out = f"{tmp_path}/slash/"
    _embed(corpus, out, tiny_gpt2_shared, part_rows=SHARD_ROWS)
    assert is_dataset(out) and len(read_manifest(out).shards) == 5
    assert_same_rows(Path(out), single)
    from embedkit.embed import embed

    with pytest.raises(ConfigError, match="differ"):
        embed(str(corpus), tmp_path / "x", shard_rows=5, part_rows=6)


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing on the way catches it."""


def test_crash_then_resume_redoes_only_the_missing_shards(corpus, single, tiny_gpt2_shared, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    real_commit = DatasetWriter.commit
    commits: list[int] = []

    def dying_commit(self, table, index):
        if len(commits) == 3:
            raise Crash
        commits.append(index)
        real_commit(self, table, index)

    monkeypatch.setattr(DatasetWriter, "commit", dying_commit)
    with pytest.raises(Crash):
        _embed(corpus, out, tiny_gpt2_shared, shard_rows=SHARD_ROWS)
    assert not out.exists() and (tmp_path / "ds.partial").is_dir()
    commits.clear()
    monkeypatch.setattr(
        DatasetWriter, "commit", lambda self, table, index: (commits.append(index), real_commit(self, table, index))
    )
    summary = _embed(corpus, out, tiny_gpt2_shared, shard_rows=SHARD_ROWS, resume=True)
    assert commits == [3, 4]  # only the shards the crashed run had not recorded
    assert summary.rows == N and summary.resumed_rows == 3 * SHARD_ROWS
    assert_same_rows(out, single)
    assert not (tmp_path / "ds.partial").exists()


def _recorded(staging: Path) -> int:
    try:
        return len((staging / "_journal.jsonl").read_text().splitlines()) - 1  # a header, then a line per shard
    except OSError:
        return 0


def test_sigkill_mid_run_then_resume_gives_the_clean_rows(corpus, single, tiny_gpt2_shared, tmp_path):
    out, staging = tmp_path / "ds", tmp_path / "ds.partial"
    args = [sys.executable, "-m", "embedkit", "embed", str(corpus), "-o", f"{out}/", "-m", tiny_gpt2_shared]
    args += ["--id-column", "doc", "--keep", "label", "--part-rows", str(SHARD_ROWS), "-q", "--resume"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while proc.poll() is None and _recorded(staging) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    if killed:
        assert not out.exists()
        # The resume runs in this process: the kill needs a real process, the resume does not (a fresh interpreter
        # paid the torch import again).
        resumed = CliRunner().invoke(cli, args[3:])
        assert resumed.exit_code == 0, resumed.output
        assert "resumed" in resumed.stderr
    assert_same_rows(out, single)
    ids = pq.read_table(out).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == N  # no duplicate and no missing id
    assert not staging.exists()


def _cli(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_every_stage_reads_a_dataset_directory(dataset, single, tiny_gpt2_shared, tmp_path, write_csv):
    out = tmp_path / "outputs"
    out.mkdir()
    assert "in 5 shards" in _cli("info", dataset).output
    _cli("train", dataset, "--label-column", "label", "-o", out / "model", "--cv", "2")
    _cli("predict", out / "model", dataset, "-o", out / "pred.parquet")
    pred = pq.read_table(out / "pred.parquet")
    assert pred.column("id").to_pylist() == pq.read_table(single).column("id").to_pylist()
    _cli("cluster", dataset, "-o", out / "clusters", "--k", "2")
    _cli("index", "build", dataset, "-o", out / "index", "--kind", "flat")
    _cli("index", "build", single, "-o", out / "index1", "--kind", "flat")
    _cli("search", out / "index", "--queries", dataset, "-k", "3", "-o", out / "hits.parquet")
    _cli("search", out / "index1", "--queries", single, "-k", "3", "-o", out / "hits1.parquet")
    hits, hits1 = pq.read_table(out / "hits.parquet"), pq.read_table(out / "hits1.parquet")
    assert hits.column("id").to_pylist() == hits1.column("id").to_pylist()
    # probe embeds texts: a dataset directory is read as its shards' rows (the manifest is no input file)
    _cli(
        "probe",
        dataset,
        "-y",
        "label",
        "-o",
        out / "probe",
        "--cv",
        "2",
        "-m",
        tiny_gpt2_shared,
        "-l",
        "0,-1",
        "-p",
        "mean",
    )
    assert json.loads((out / "probe" / "probe.json").read_text())["rows"]["input"] == N
    _cli("dedup", dataset, "-o", out / "dedup.parquet", "--threshold", "0.99")
    assert pq.read_table(out / "dedup.parquet").num_rows == N


def test_python_api_reads_a_dataset_directory(dataset, single):
    import embedkit

    feats = embedkit.open_features(dataset)
    assert feats.num_rows == N and feats.embedding_column() == "embedding"
    X, ids, skipped = feats.load()
    assert X.shape[0] == N - 1 and skipped == 1
    from embedkit.estimator import HiddenStateEmbedder

    assert HiddenStateEmbedder.from_features(dataset).get_params()["model"] == open_features(single).config.model


@pytest.mark.parametrize("dtype", ["int8", "binary"])
def test_compact_vectors_in_a_dataset_read_back_as_in_a_single_file(corpus, tiny_gpt2_shared, tmp_path, dtype):
    config = ExtractConfig(model=tiny_gpt2_shared, dtype=dtype)
    kwargs = {"id_column": "doc", "device": "cpu", "progress": False}
    embed_file(corpus, tmp_path / "one.parquet", config, part_rows=SHARD_ROWS, **kwargs)
    embed_file(corpus, tmp_path / "ds", config, shard_rows=SHARD_ROWS, **kwargs)
    one, ds = open_features(tmp_path / "one.parquet"), open_features(tmp_path / "ds")
    # int8: one scale from every shard, as the single-file merge takes one from every part
    assert ds.vector_encoding("embedding") == one.vector_encoding("embedding")
    assert ds.schema.field("embedding").type == one.schema.field("embedding").type
    np.testing.assert_array_equal(ds.load()[0], one.load()[0])
