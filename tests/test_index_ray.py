"""``index build --engine ray``: shard groups added by Ray tasks and merged on the driver give the local build's index.

Everything runs on a real two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head and a worker
node of one CPU each, separate raylets and object stores, one shared filesystem), so the tasks of one build run
on both nodes. The CLI test joins it with ``--ray-address``, a subprocess as a user would run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray", reason="--engine ray needs the ray extra: pip install -e '.[dev]'")
from conftest import RAY_NODE_STORE  # noqa: E402
from test_dataset_index import META, _table, clustered, write_both  # noqa: E402

from embedkit import ConfigError, InputError  # noqa: E402
from embedkit.dataset import DatasetWriter, read_manifest, write_shard  # noqa: E402
from embedkit.index import Index, build_index  # noqa: E402
from embedkit.index import build as build_module  # noqa: E402
from embedkit.index.ray_build import RayAdds  # noqa: E402
from embedkit.store import ShardedFeatures, vectors_to_arrow  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUILD = {"eval_queries": 200, "batch_rows": 256}


@pytest.fixture(scope="module")
def cluster(ray_two_nodes):
    return ray_two_nodes


def _files(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in ("index.faiss", "ids.parquet")}


def _same_build(a: Path, b: Path) -> None:
    """Same FAISS index and id map byte for byte, and the same manifest but for the build's clock readings."""
    assert _files(a) == _files(b)
    ma, mb = (json.loads((d / "index.json").read_text()) for d in (a, b))
    for m in (ma, mb):
        for key in ("seconds", "created_at", "queries_per_second"):
            m["build"].pop(key)
        m.pop("created_at", None)
    assert ma == mb


@pytest.mark.parametrize("kind,metric", [("flat", "cosine"), ("ivf", "l2"), ("ivfpq", "cosine")])
def test_ray_build_is_the_local_build(cluster, tmp_path, kind, metric):
    x = clustered(4000)
    _, dataset = write_both(tmp_path, x, shard_rows=500)
    engine = RayAdds(workers=2)
    ray_report = build_index(dataset, tmp_path / "ray", kind=kind, metric=metric, engine=engine, **BUILD)
    local_report = build_index(dataset, tmp_path / "local", kind=kind, metric=metric, **BUILD)
    assert len(engine.groups_per_node) == 2, engine.groups_per_node  # both nodes added shards
    assert sum(engine.groups_per_node.values()) == 8
    _same_build(tmp_path / "ray", tmp_path / "local")
    assert (ray_report.rows, ray_report.params, ray_report.recall_at_10) == (
        local_report.rows,
        local_report.params,
        local_report.recall_at_10,
    )
    assert ray_report.notes == []
    queries = x[::97] + 0.01
    a, b = Index.load(tmp_path / "ray"), Index.load(tmp_path / "local")
    ra, rb = a.search(queries, k=10), b.search(queries, k=10)
    np.testing.assert_array_equal(ra.positions, rb.positions)
    np.testing.assert_array_equal(ra.scores, rb.scores)


def test_ids_stay_with_their_vectors_across_null_and_nonfinite_rows(cluster, tmp_path):
    x = clustered(3000, seed=3)
    table = _table(x)
    valid = np.ones(len(x), bool)
    valid[[5, 700, 701, 2999]] = False  # rows without an embedding, in two shards
    bad = x.copy()
    bad[1200, 0] = np.finfo(np.float32).max  # its squared norm overflows: no search could rank it
    table = table.set_column(2, "embedding", vectors_to_arrow(bad, valid, "float32"))
    with DatasetWriter(tmp_path / "ds", {"test": 2}) as writer:
        for i, start in enumerate(range(0, len(x), 400)):
            writer.record(write_shard(writer.staging, i, table.slice(start, 400)))
        writer.finish(META)
    report = build_index(tmp_path / "ds", tmp_path / "ray", kind="flat", engine=RayAdds(workers=2), **BUILD)
    build_index(tmp_path / "ds", tmp_path / "local", kind="flat", **BUILD)
    _same_build(tmp_path / "ray", tmp_path / "local")
    assert (report.rows, report.skipped_null_rows, report.skipped_nonfinite_rows) == (2995, 4, 1)
    index = Index.load(tmp_path / "ray")
    rows = [i for i in range(len(x)) if valid[i] and i != 1200]
    result = index.search(x[rows[::50]], k=1)  # each row finds itself: its id is the one stored beside it
    found = [hit["id"] for q in range(len(rows[::50])) for hit in result.hits(q)]
    assert found == rows[::50]


def test_rescore_vectors_are_the_local_builds(cluster, tmp_path):
    """int8 shards re-scored with float features: vectors.npy and its recall entry are the local build's."""
    from test_index_rescore import pair

    from embedkit.store import read_metadata

    x = clustered(2400, dim=32, seed=5)
    int8_file, floats = pair(tmp_path, x, "int8")
    table = pq.read_table(int8_file)
    with DatasetWriter(tmp_path / "ds", {"test": 3}) as writer:
        for i, start in enumerate(range(0, len(x), 600)):
            writer.record(write_shard(writer.staging, i, table.slice(start, 600).replace_schema_metadata(None)))
        writer.finish(read_metadata(int8_file))
    options = {"kind": "ivf", "rescore_with": floats, **BUILD}
    report = build_index(tmp_path / "ds", tmp_path / "ray", engine=RayAdds(workers=2), **options)
    build_index(tmp_path / "ds", tmp_path / "local", **options)
    _same_build(tmp_path / "ray", tmp_path / "local")
    assert (tmp_path / "ray" / "vectors.npy").read_bytes() == (tmp_path / "local" / "vectors.npy").read_bytes()
    assert report.rescore is not None and report.codes == "sq8"


def test_hnsw_is_built_in_the_driver_with_a_note(cluster, tmp_path):
    _, dataset = write_both(tmp_path, clustered(2000), shard_rows=512)
    engine = RayAdds(workers=2)
    report = build_index(dataset, tmp_path / "ray", kind="hnsw", engine=engine, **BUILD)
    build_index(dataset, tmp_path / "local", kind="hnsw", **BUILD)
    assert report.notes == [build_module.HNSW_SERIAL_NOTE] and engine.groups_per_node == {}
    _same_build(tmp_path / "ray", tmp_path / "local")


def test_one_features_file_is_refused_before_anything_is_written(cluster, tmp_path):
    single, _ = write_both(tmp_path, clustered(600), shard_rows=300)
    with pytest.raises(ConfigError, match="sharded dataset directory"):
        build_index(single, tmp_path / "ix", kind="flat", engine=RayAdds())
    assert not (tmp_path / "ix").exists()
    with pytest.raises(ConfigError, match="--workers N"):
        RayAdds(workers="1:4")


def test_the_driver_reads_no_shard(cluster, tmp_path, monkeypatch):
    """Sampling and adding both read on the workers: a driver whose shard reader fails still builds the index."""
    _, dataset = write_both(tmp_path, clustered(2000), shard_rows=500)

    def no_reading(self, *args, **kwargs):
        raise AssertionError("the driver read a shard")

    with monkeypatch.context() as patch:
        patch.setattr(ShardedFeatures, "iter_tables", no_reading)
        patch.setattr(ShardedFeatures, "read_table", no_reading)
        build_index(dataset, tmp_path / "ray", kind="ivf", engine=RayAdds(workers=2), **BUILD)
    build_index(dataset, tmp_path / "local", kind="ivf", **BUILD)
    _same_build(tmp_path / "ray", tmp_path / "local")


def test_a_corrupt_shard_is_caught_by_its_worker(cluster, tmp_path):
    """The worker reading a shard checks its sha256 first; its InputError reaches the caller as itself (not a Ray
    traceback), and no index is left behind."""
    _, dataset = write_both(tmp_path, clustered(2000), shard_rows=500)
    shard = dataset / read_manifest(dataset).shards[2].file
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the sha256 tells
    shard.write_bytes(bytes(data))
    with pytest.raises(InputError, match="part-00002.parquet"):
        build_index(dataset, tmp_path / "ix", kind="ivf", engine=RayAdds(workers=2), **BUILD)
    assert not (tmp_path / "ix").exists()


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(
        [sys.executable, "-m", "embedkit", *args], capture_output=True, text=True, env=environment, timeout=120
    )


def test_cli_joins_the_cluster_and_refuses_a_corrupt_shard_cleanly(cluster, tmp_path):
    _, dataset = write_both(tmp_path, clustered(2000), shard_rows=500)
    out = _cli("index", "build", str(dataset), "-o", str(tmp_path / "ix"), "--kind", "ivf", "--engine", "ray",
               "--workers", "2", "--ray-address", cluster.address, "-q")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert len(Index.load(tmp_path / "ix")) == 2000

    shard = dataset / read_manifest(dataset).shards[1].file
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    out = _cli("index", "build", str(dataset), "-o", str(tmp_path / "ix2"), "--engine", "ray",
               "--ray-address", cluster.address, "-q")  # fmt: skip
    assert out.returncode == 3, out.stderr
    assert "part-00001.parquet" in out.stderr and "Traceback" not in out.stderr
    out = _cli("index", "build", str(dataset), "-o", str(tmp_path / "ix3"), "--workers", "2")
    assert out.returncode == 2 and "--engine ray" in out.stderr


def test_a_worker_node_killed_mid_build_changes_nothing(cluster, tmp_path, monkeypatch):
    """A node lost while its tasks run: Ray runs them again elsewhere (they only read), and the index is the same.
    Last in this file: it leaves the cluster with its two first nodes."""
    _, dataset = write_both(tmp_path, clustered(4000), shard_rows=500)
    doomed = cluster.add_node(num_cpus=1, object_store_memory=RAY_NODE_STORE)
    cluster.wait_for_nodes()
    run, seen = RayAdds._run, []

    def run_and_kill(self, name, calls):
        for result in run(self, name, calls):
            seen.append(name)
            if seen.count("add_shards") == 1:  # more adds are queued and running, some on the doomed node
                cluster.remove_node(doomed, allow_graceful=False)
            yield result

    monkeypatch.setattr(RayAdds, "_run", run_and_kill)
    engine = RayAdds(workers=3)  # one task per CPU of the three nodes
    build_index(dataset, tmp_path / "ray", kind="ivf", engine=engine, **BUILD)
    monkeypatch.setattr(RayAdds, "_run", run)
    assert seen.count("add_shards") == 8 and len(engine.groups_per_node) >= 2
    build_index(dataset, tmp_path / "local", kind="ivf", **BUILD)
    _same_build(tmp_path / "ray", tmp_path / "local")
