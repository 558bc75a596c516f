"""The Ray Data engine against a real local Ray instance (2 CPUs, shared by the session).

Every Ray run starts fresh actors that import torch, so the file keeps to three runs: one through the CLI
(compared in detail with the local engine) and the two halves of a failed-then-resumed run.
"""

from __future__ import annotations

import json
import socket
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray", reason="the Ray engine needs the ray extra: pip install -e '.[dev]'")

from conftest import sample_texts  # noqa: E402

from embedkit import ExtractConfig, IncompatibleError, ModelLoadError, OutputError  # noqa: E402
from embedkit.cli import cli  # noqa: E402
from embedkit.embed import embed_file  # noqa: E402
from embedkit.engines import ray as ray_engine  # noqa: E402
from embedkit.store import PartWriter, open_features  # noqa: E402

LAYERS_POOLINGS = ["--layer", "1", "--layer", "-1", "--pooling", "mean,last"]


@pytest.fixture(scope="session")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


def _csv_with_bad_rows(path):
    """150 rows: texts with an empty one, non-ASCII, and a malformed line (too many fields) at the end."""
    texts = sample_texts(149, seed=3)
    texts[7] = ""
    texts[20] = "Ünïcödé 漢字 and emoji 😀"
    lines = ["text,label"] + [f'"{t}",{i % 3}' for i, t in enumerate(texts)] + ['"broken",1,extra,fields']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ray_and_local(tiny_gpt2_shared, tmp_path_factory, ray_cluster):
    """The same CSV embedded by `embedkit embed --engine ray` (4 parts, 2 workers) and by the local engine."""
    root = tmp_path_factory.mktemp("ray")
    source = _csv_with_bad_rows(root / "in.csv")
    mp = pytest.MonkeyPatch()
    mp.setattr(ray_engine, "RAY_PART_ROWS", 40)  # several parts, so both workers get some and order is tested
    mp.setattr(ray_engine, "IN_FLIGHT_PER_WORKER", 1)  # 4 parts, 2 actors: parts are handed out as others return
    try:
        result = CliRunner().invoke(
            cli,
            [
                "embed",
                str(source),
                "-o",
                str(root / "ray.parquet"),
                "--model",
                tiny_gpt2_shared,
                "--keep",
                "label",
                "--engine",
                "ray",
                "--workers",
                "2",
                "--device",
                "cpu",
                "-q",
                *LAYERS_POOLINGS,
            ],
        )
    finally:
        mp.undo()
    assert result.exit_code == 0, result.output
    config = ExtractConfig(model=tiny_gpt2_shared, layers=(1, -1), pooling=("mean", "last"))
    embed_file(source, root / "local.parquet", config, keep=["label"], device="cpu", progress=False)
    return root / "ray.parquet", root / "local.parquet", result.output


def test_ray_output_equals_local_engine(ray_and_local):
    ray_out, local_out, summary = ray_and_local
    a, b = pq.read_table(ray_out), pq.read_table(local_out)
    assert "150 rows" in summary
    assert a.schema.remove_metadata() == b.schema.remove_metadata()
    assert a.column("id").to_pylist() == list(range(150))
    for column in ("id", "text", "label", "n_tokens", "n_windows", "truncated", "status", "error"):
        assert a.column(column).to_pylist() == b.column(column).to_pylist(), column
    for column in ("embedding_l1_mean", "embedding_l1_last", "embedding_l2_mean", "embedding_l2_last"):
        x, y = a.column(column).to_pylist(), b.column(column).to_pylist()
        assert [v is None for v in x] == [v is None for v in y]
        np.testing.assert_allclose(
            np.array([v for v in x if v is not None]), np.array([v for v in y if v is not None]), atol=1e-5
        )


def test_ray_keeps_bad_rows_with_their_status(ray_and_local):
    rows = pq.read_table(ray_and_local[0], columns=["id", "status", "error", "embedding_l2_mean"]).to_pylist()
    assert rows[7]["status"] == "empty" and rows[7]["embedding_l2_mean"] is None
    assert rows[149]["status"] == "malformed" and "fields" in rows[149]["error"]
    assert rows[20]["status"] == "ok" and rows[20]["embedding_l2_mean"] is not None


def test_ray_metadata_equals_local(ray_and_local):
    ray_meta, local_meta = (open_features(p).meta for p in ray_and_local[:2])
    for meta in (ray_meta, local_meta):
        meta.pop("created_at")
    assert ray_meta == local_meta


def test_ray_output_reads_downstream_and_in_info(ray_and_local):
    features = open_features(ray_and_local[0])
    matrix, table, skipped = features.load("embedding_l2_mean", extra=["label"])
    assert matrix.shape == (148, 32) and skipped == 2 and table.num_rows == 148
    result = CliRunner().invoke(cli, ["info", str(ray_and_local[0]), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["rows"] == 150 and info["status_counts"] == {"ok": 148, "empty": 1, "malformed": 1}


def test_ray_resume_sends_only_missing_parts(tiny_gpt2_shared, tmp_path, monkeypatch, ray_cluster):
    source = tmp_path / "in.jsonl"
    lines = [json.dumps({"doc": f"d{i}", "text": t}) for i, t in enumerate(sample_texts(100, seed=5))]
    source.write_text("\n".join(lines[:50] + ["{not json"] + lines[50:]) + "\n", encoding="utf-8")
    out, config = tmp_path / "out.parquet", ExtractConfig(model=tiny_gpt2_shared)
    run = dict(id_column="doc", device="cpu", progress=False, part_rows=20, workers=1)

    commit, calls = PartWriter.commit, []

    def commit_then_fail(self, table, index=None):
        calls.append(index)
        if len(calls) == 3:
            raise OutputError("disk full (simulated)")
        commit(self, table, index)

    monkeypatch.setattr(PartWriter, "commit", commit_then_fail)
    with pytest.raises(OutputError, match="simulated"):
        ray_engine.embed_file_ray(source, out, config, **run)
    monkeypatch.setattr(PartWriter, "commit", commit)
    partial = out.with_name(out.name + ".partial")
    committed = sorted(p.name for p in partial.glob("part-*.parquet"))
    assert len(committed) == 2 and not out.exists()

    with pytest.raises(OutputError, match="--resume"):
        ray_engine.embed_file_ray(source, out, config, **run)
    with pytest.raises(IncompatibleError, match="engine"):  # the local engine cannot continue a Ray partial run
        embed_file(source, out, config, id_column="doc", device="cpu", progress=False, resume=True, part_rows=20)

    sent, real_encode = [], ray_engine.RayEngine.encode

    def spying_encode(self, parts, progress=None):  # records which parts the driver hands to the cluster
        return real_encode(self, ((sent.append(index), (index, texts))[1] for index, texts in parts), progress)

    monkeypatch.setattr(ray_engine.RayEngine, "encode", spying_encode)
    summary = ray_engine.embed_file_ray(source, out, config, resume=True, **run)
    assert sorted(sent) == sorted(set(range(6)) - {int(name[5:11]) for name in committed})
    assert summary.rows == 101 and summary.resumed_rows == 40 and summary.bad_rows == {"malformed": 1}
    assert not partial.exists()

    embed_file(source, tmp_path / "local.parquet", config, id_column="doc", device="cpu", progress=False)
    a, b = pq.read_table(out), pq.read_table(tmp_path / "local.parquet")
    assert a.column("id").to_pylist() == b.column("id").to_pylist()
    assert a.column("status").to_pylist() == b.column("status").to_pylist()
    x, y = (np.array([v for v in t.column("embedding").to_pylist() if v is not None]) for t in (a, b))
    np.testing.assert_allclose(x, y, atol=1e-5)


def test_driver_reads_the_input_only_as_the_actors_work(ray_cluster):
    """One actor pool for the whole run; the driver reads at most ``limit`` parts ahead of the answers."""

    class CountingWorker:  # a stand-in model actor (defined here: Ray ships it by value, tests/ is not importable)
        def ready(self):
            return True

        def encode(self, index, texts):
            return index, len(texts)

    actors = [ray.remote(CountingWorker).options(num_cpus=0).remote() for _ in range(2)]
    read = []

    def parts():
        for index in range(9):
            read.append(index)
            yield index, ["text"] * (index + 1)

    answers = ray_engine.stream(ray, actors, parts(), limit=3)
    got = [next(answers)]
    assert len(read) == 3  # three handed out, one answered: nothing more read yet
    for answer in answers:
        assert len(read) <= len(got) + 3
        got.append(answer)
    assert sorted(got) == [(i, i + 1) for i in range(9)]


def test_worker_error_reaches_the_driver_typed(tmp_path):
    config = ExtractConfig(model=str(tmp_path / "no-such-model")).to_dict()
    worker = ray_engine.EmbedWorker(config, "cpu", None, None)
    assert not worker.ready()
    with pytest.raises(ModelLoadError, match="on a Ray worker"):
        ray_engine.unwrap(*worker.encode(0, ["a text"]))


def test_missing_ray_says_how_to_install(tiny_gpt2_shared, write_csv, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    source = write_csv([{"text": "hello"}])
    result = CliRunner().invoke(
        cli, ["embed", str(source), "-o", str(tmp_path / "o.parquet"), "--model", tiny_gpt2_shared, "--engine", "ray"]
    )
    assert result.exit_code == 2
    assert "pip install 'embedkit[ray]'" in result.output


def test_unreachable_address_fails_fast_and_leaves_nothing(tiny_gpt2_shared, write_csv, tmp_path, monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # act as a fresh process, not the test session
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source, out = write_csv([{"text": "hello"}]), tmp_path / "o.parquet"
    result = CliRunner().invoke(
        cli,
        [
            "embed",
            str(source),
            "-o",
            str(out),
            "--model",
            tiny_gpt2_shared,
            "--engine",
            "ray",
            "--ray-address",
            f"127.0.0.1:{port}",
        ],
    )
    assert result.exit_code == 2
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in result.output
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()
    result = CliRunner().invoke(
        cli,
        [
            "embed",
            str(source),
            "-o",
            str(out),
            "--model",
            tiny_gpt2_shared,
            "--engine",
            "ray",
            "--ray-address",
            "headnode",
        ],
    )
    assert result.exit_code == 2 and "HOST:PORT" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workers", "2"], "need --engine ray"),
        (["--engine", "ray", "--device", "cuda"], "needs --gpus-per-worker"),
        (["--engine", "ray", "--device", "cpu", "--gpus-per-worker", "1"], "--device is cpu"),
    ],
)
def test_contradictory_options_are_usage_errors(args, message, tiny_gpt2_shared, write_csv, tmp_path):
    source = write_csv([{"text": "hello"}])
    result = CliRunner().invoke(
        cli, ["embed", str(source), "-o", str(tmp_path / "o.parquet"), "--model", tiny_gpt2_shared, *args]
    )
    assert result.exit_code == 2
    assert message in result.output
