"""The Ray engine on a real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``).

A head node and worker nodes are separate raylets with their own worker processes and object stores, as on a
real cluster (the filesystem is shared, as the engine requires). One test spreads the actors over two nodes
and compares the dataset with the local engine's file; the other kills a worker node in the middle of a job:
the job either finishes through Ray's retries or fails, and ``--resume`` then completes it; either way the
dataset holds exactly the rows of a clean run.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray", reason="the Ray engine needs the ray extra: pip install -e '.[dev]'")
from conftest import RAY_NODE_STORE, sample_texts  # noqa: E402

from embedkit import ExtractConfig, OutputError  # noqa: E402
from embedkit import dataset as dataset_module  # noqa: E402
from embedkit.dataset import read_manifest  # noqa: E402
from embedkit.embed import embed, embed_file  # noqa: E402
from embedkit.engines.ray import RayEngine  # noqa: E402
from embedkit.spec import InputSpec, Runtime  # noqa: E402


@pytest.fixture(scope="module")
def cluster(ray_two_nodes):
    return ray_two_nodes


def _input(tmp_path, n=90):
    texts = sample_texts(n, seed=11)
    texts[4] = ""  # a row kept with its status
    path = tmp_path / "in.csv"
    path.write_text("text\n" + "\n".join(f'"{t}"' for t in texts) + "\n", encoding="utf-8")
    return path


def _rows(path):
    tables = [pq.read_table(path / s.file) for s in read_manifest(path).shards]
    return pa.concat_tables(tables)


def _assert_same_rows(dataset_dir, local_file):
    a, b = _rows(dataset_dir), pq.read_table(local_file)
    assert a.num_rows == b.num_rows
    for column in ("id", "text", "status", "n_tokens"):
        assert a.column(column).to_pylist() == b.column(column).to_pylist(), column
    x, y = (np.array([v for v in t.column("embedding").to_pylist() if v is not None]) for t in (a, b))
    np.testing.assert_allclose(x, y, atol=1e-5)


def _run(engine, source, out, config, **options):
    runtime = Runtime(device="cpu", progress=False)
    return embed(InputSpec(source), out, config, runtime, engine=engine, part_rows=10, **options)


def test_actors_on_two_nodes_write_the_local_engines_rows(cluster, tiny_gpt2_shared, tmp_path):
    source, config = _input(tmp_path), ExtractConfig(model=tiny_gpt2_shared)
    engine = RayEngine(workers=2)  # 1 CPU on the head, 1 on the worker node: the pool spans both
    summary = _run(engine, source, tmp_path / "out", config)
    assert summary.rows == 90 and summary.bad_rows == {"empty": 1}
    assert len(engine.shards_per_node) == 2, engine.shards_per_node  # both nodes wrote shards
    assert sum(engine.shards_per_node.values()) == 9
    embed_file(source, tmp_path / "local.parquet", config, device="cpu", progress=False)
    _assert_same_rows(tmp_path / "out", tmp_path / "local.parquet")


def test_worker_node_killed_mid_job_then_resume_gives_the_clean_rows(cluster, tiny_gpt2_shared, tmp_path, monkeypatch):
    source, config = _input(tmp_path, n=120), ExtractConfig(model=tiny_gpt2_shared)
    doomed = cluster.add_node(num_cpus=1, object_store_memory=RAY_NODE_STORE)
    cluster.wait_for_nodes()
    record, recorded, killed = dataset_module.DatasetWriter.record, [], []

    def record_and_kill(self, info):
        record(self, info)
        recorded.append(info["index"])
        if len(recorded) == 2:  # work is still queued and running: the node goes now, with its actor
            cluster.remove_node(doomed, allow_graceful=False)
            killed.append(len(recorded))

    monkeypatch.setattr(dataset_module.DatasetWriter, "record", record_and_kill)
    out, engine = tmp_path / "out", RayEngine(workers=3)  # one actor per CPU of the three nodes
    try:
        summary = _run(engine, source, out, config)
        finished_through_retries = True
    except OutputError as exc:  # a clean, typed failure that says what to do
        assert "--resume" in str(exc)
        finished_through_retries = False
        print(f"the job failed after the node was killed ({exc}); resuming")
    monkeypatch.setattr(dataset_module.DatasetWriter, "record", record)
    assert killed == [2] and len(recorded) >= 2
    if not finished_through_retries:
        summary = _run(RayEngine(workers=2), source, out, config, resume=True)
        assert summary.resumed_rows >= 20  # the two shards recorded before the kill were kept
    assert summary.rows == 120
    embed_file(source, tmp_path / "local.parquet", config, device="cpu", progress=False)
    _assert_same_rows(out, tmp_path / "local.parquet")
