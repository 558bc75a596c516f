"""``index build`` from a sharded dataset streams it shard by shard and builds the index a single file gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedkit.config import ExtractConfig
from embedkit.dataset import DatasetWriter, write_shard
from embedkit.index import Index, build_index
from embedkit.store import open_features, vectors_to_arrow, with_metadata


def _table(x: np.ndarray) -> pa.Table:
    n = len(x)
    return pa.table(
        {
            "id": pa.array(np.arange(n)),
            "text": [f"row {i}" for i in range(n)],
            "embedding": vectors_to_arrow(x, np.ones(n, bool), "float32"),
        }
    )


META = {"format_version": 1, "config": ExtractConfig(model="synthetic", layers=(2,), max_length=64, stride=8).to_dict()}


def write_both(tmp_path: Path, x: np.ndarray, shard_rows: int) -> tuple[Path, Path]:
    table = _table(x)
    single = tmp_path / "single.parquet"
    pq.write_table(table.cast(with_metadata(table.schema, META)), single)
    with DatasetWriter(tmp_path / "ds", {"test": 1}) as writer:
        for i, start in enumerate(range(0, len(x), shard_rows)):
            writer.record(write_shard(writer.staging, i, table.slice(start, shard_rows)))
        writer.finish(META)
    return single, tmp_path / "ds"


def clustered(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim)) * 3
    return (centres[rng.integers(20, size=n)] + rng.standard_normal((n, dim))).astype(np.float32)


@pytest.mark.parametrize(
    "kind,metric,shard_rows",
    # IVF lists do not depend on how the adds are batched; an HNSW graph does (FAISS inserts each add call's
    # vectors level by level), so its shards are a multiple of the batch size, as its batches then are.
    [("ivf", "l2", 700), ("ivfpq", "cosine", 700), ("hnsw", "ip", 768), ("ivf", "cosine", 3000)],
)
def test_index_from_a_dataset_equals_the_single_file_build(tmp_path, kind, metric, shard_rows):
    x = clustered(3000)
    single, dataset = write_both(tmp_path, x, shard_rows=shard_rows)
    a = build_index(dataset, tmp_path / "ix_ds", kind=kind, metric=metric, eval_queries=200, batch_rows=256)
    b = build_index(single, tmp_path / "ix_1", kind=kind, metric=metric, eval_queries=200, batch_rows=256)
    assert (a.rows, a.factory, a.params) == (b.rows, b.factory, b.params) == (3000, b.factory, b.params)
    assert a.recall_at_10 == b.recall_at_10 and a.recall_at_10 is not None and a.recall_at_10 >= 0.6
    queries = x[:40] + 0.01
    ia, ib = Index.load(tmp_path / "ix_ds"), Index.load(tmp_path / "ix_1")
    ra, rb = ia.search(queries, k=10), ib.search(queries, k=10)
    ids_a = np.asarray(ia.ids.column("id"))[ra.positions]
    ids_b = np.asarray(ib.ids.column("id"))[rb.positions]
    np.testing.assert_array_equal(ids_a, ids_b)


def test_a_dataset_streams_in_batches_of_one_shard_at_most(tmp_path):
    _, dataset = write_both(tmp_path, clustered(1000), shard_rows=300)
    sizes = [len(m) for m, _ in open_features(dataset).iter_batches(batch_rows=128)]
    assert sum(sizes) == 1000 and max(sizes) <= 128
    assert sizes[:3] == [128, 128, 44]  # a batch never spans two shards
