"""Sharded features datasets: ``DIR/part-00000.parquet ...`` plus the manifest ``DIR/_embedkit-dataset.json``.

One features file stops scaling when one process must write it: a dataset is written shard by shard, by as many
workers as there are (``write_shard``, any process that sees the file system), while one driver
(:class:`DatasetWriter`) holds the output's lock, journals the finished shards, and at the end verifies them,
writes the manifest and switches the whole directory in with one rename. A killed job leaves its shards in the
staging directory ``DIR.partial``; ``resume`` keeps every shard that is still whole and redoes the others.

The manifest carries what a single features file carries in its Parquet metadata (the ``features`` table) plus
each shard's rows, size and sha256. It is validated (pydantic) before any name in it is used, and a shard's name
must be exactly the one its index gives, so no stored name leads outside the directory. It starts with an
underscore so that pyarrow, pandas, polars and Hugging Face ``datasets`` read the directory as-is (they skip
``_``-prefixed files).
"""

from __future__ import annotations

from .manifest import (
    MANIFEST_NAME,
    DatasetManifest,
    ShardInfo,
    is_dataset,
    iter_shard_paths,
    read_manifest,
    shard_name,
    shard_stat_check,
    staging_dir,
    verify_shard,
)
from .write import DatasetWriter, ShardMap, inspect_shard, map_here, rewrite_shard, write_shard

__all__ = [
    "MANIFEST_NAME",
    "DatasetManifest",
    "DatasetWriter",
    "ShardInfo",
    "ShardMap",
    "inspect_shard",
    "is_dataset",
    "iter_shard_paths",
    "map_here",
    "read_manifest",
    "rewrite_shard",
    "shard_name",
    "shard_stat_check",
    "staging_dir",
    "verify_shard",
    "write_shard",
]
