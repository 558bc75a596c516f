"""The model actor of the Ray pipeline: embeds the shards the read tasks read, writes them; returns small facts.

One actor of Ray Data's pool loads the model once and is then handed blocks, one per call: each block is one
whole shard that a read task (``read.py``) read on some worker. The actor checks the shard arrived whole
(``read.shards_of``), embeds its rows with the same ``Extractor`` as the local engine (length-sorted token-budget
batches), builds the output rows with the embed driver's ``build_table`` (statuses of bad rows included) and
writes the shard into the dataset's staging directory with ``dataset.write_shard``. What goes back to the driver
is the shard's info dict (index, file, rows, checksum) and a few counts, never texts or vectors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ...config import ExtractConfig
from ...errors import EmbedkitError
from ...sources import Records
from ...spec import InputSpec


class ShardEmbedder:
    """A Ray Data actor (``map_batches`` on an actor pool): one model load, then any number of shards.

    Args:
        spec: the input spec as plain values (``plan.spec_to_dict``).
        config: resolved or unresolved extraction settings (``ExtractConfig.to_dict``).
        device, batch_tokens, threads: as for ``Extractor``.
        staging: the dataset's staging directory (``DatasetWriter.staging``); shared with the driver.
        strict: a bad row fails the shard (nothing written) instead of being recorded with its status.
    """

    def __init__(
        self,
        spec: dict[str, Any],
        config: dict[str, Any],
        device: str,
        batch_tokens: int | None,
        threads: int | None,
        staging: str,
        strict: bool = False,
    ) -> None:
        from transformers.utils import logging as hf_logging

        from ...embed import build_metadata
        from ...extract import Extractor

        hf_logging.disable_progress_bar()  # one bar per actor on the driver's terminal helps nobody
        self.spec, self.staging, self.strict = InputSpec(**spec), Path(staging), strict
        self.extractor: Extractor | None = None
        self.error: EmbedkitError | None = None
        self.meta: dict[str, Any] | None = None
        try:
            self.extractor = Extractor(
                ExtractConfig.from_dict(config), device=device, batch_tokens=batch_tokens, threads=threads
            )
            self.meta = build_metadata(self.extractor, self.spec)
        except EmbedkitError as exc:
            # Sent to the driver with each shard instead (e.g. the model is missing on this node): an actor that
            # dies in __init__ is restarted again and again, and Ray's wrappers lose the typed error.
            self.error = exc

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        """One block (``batch_format="pyarrow"``): one shard, or, were Ray Data to merge blocks, several whole ones."""
        from .read import shards_of

        infos = [json.dumps(self.embed_shard(index, rows)) for index, rows in shards_of(batch)]
        return {"info": np.array(infos, dtype=object)}

    def embed_shard(self, index: int, records: Records | EmbedkitError) -> dict[str, Any]:
        """Embed and write one shard's rows (numbered across the whole input); its info dict, or ``{"error",
        "error_type"}`` for an embedkit error (also one its read met, passed here in place of the rows)."""
        from ...dataset import write_shard
        from ...embed import _stop_at_bad_row, build_table, model_texts

        try:
            if isinstance(records, EmbedkitError):
                raise records
            if self.error is not None:
                raise self.error
            assert self.extractor is not None
            result = self.extractor.encode(model_texts(records))
            table = build_table(records, result, self.extractor.config.dtype, self.spec.text_column)
            if self.strict:
                _stop_at_bad_row(table, records)
            info = write_shard(self.staging, index, table)
        except EmbedkitError as exc:
            return {"index": index, "error": str(exc), "error_type": type(exc).__name__}
        valid = result.valid
        import ray

        facts: dict[str, Any] = {
            "tokens": int(result.n_tokens[valid].sum()),
            "embedded": int(valid.sum()),
            "node": ray.get_runtime_context().get_node_id(),  # where the work ran: RayEngine.shards_per_node
        }
        if self.meta is not None:  # the dataset's metadata, sent once per actor: the driver loads no model
            facts["meta"], self.meta = self.meta, None
        return {**info, "facts": facts}


__all__ = ["ShardEmbedder"]
