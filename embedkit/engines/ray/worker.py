"""The model actor of the Ray pipeline: reads its shards, embeds them, writes them; returns only small facts.

One actor of Ray Data's pool loads the model once and is then handed shard descriptors (``plan.Shard``), one
per call. For each it reads the shard's rows from the input file with embedkit's own reader, embeds them with
the same ``Extractor`` as the local engine (length-sorted token-budget batches), builds the output rows with the
embed driver's ``build_table`` (statuses of bad rows included) and writes the shard into the dataset's staging
directory with ``dataset.write_shard``. What goes back to the driver is the shard's info dict (index, file,
rows, checksum) and a few counts, never texts or vectors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ...config import ExtractConfig
from ...errors import EmbedkitError, InputError
from ...sources import Records
from ...spec import InputSpec
from .plan import Shard, file_spec

SHARD_FIELDS = ("index", "file", "start", "stop", "first_row")


class _Cursor:
    """Reads one file's shards in increasing order without parsing the file again for each shard.

    Ray Data hands each actor every N-th shard of a pool of N actors in input order, so an actor that kept its
    place reads each file once in all; a shard before the place (a retried task) opens the file again.
    """

    def __init__(self, spec: InputSpec, path: Path, start: int, shard_rows: int) -> None:
        self.batches: Iterator[Records] = file_spec(spec, path).source().batches(shard_rows, skip=start)
        self.position, self.shard_rows = start, shard_rows

    def take(self, shard: Shard) -> Records:
        for records in self.batches:
            at = self.position
            self.position += len(records)
            if at == shard.start:
                if len(records) != shard.stop - shard.start:
                    break
                return records
        raise InputError(
            f"input file changed during the job: rows {shard.start}-{shard.stop} of file {shard.file} are not "
            "where the plan put them; run again with --overwrite"
        )


class ShardEmbedder:
    """A Ray Data actor (``map_batches`` on an actor pool): one model load, then any number of shards.

    Args:
        spec: the input spec as plain values (``plan.spec_to_dict``).
        files: the input's files, in plan order.
        config: resolved or unresolved extraction settings (``ExtractConfig.to_dict``).
        device, batch_tokens, threads: as for ``Extractor``.
        staging: the dataset's staging directory (``DatasetWriter.staging``); shared with the driver.
        shard_rows: rows per shard (shards start at multiples of it within a file).
        strict: a bad row fails the shard (nothing written) instead of being recorded with its status.
    """

    def __init__(
        self,
        spec: dict[str, Any],
        files: list[str],
        config: dict[str, Any],
        device: str,
        batch_tokens: int | None,
        threads: int | None,
        staging: str,
        shard_rows: int,
        strict: bool = False,
    ) -> None:
        from transformers.utils import logging as hf_logging

        from ...embed import build_metadata
        from ...extract import Extractor

        hf_logging.disable_progress_bar()  # one bar per actor on the driver's terminal helps nobody
        self.spec, self.files, self.staging = InputSpec(**spec), [Path(f) for f in files], Path(staging)
        self.shard_rows, self.strict = shard_rows, strict
        self.cursor: tuple[int, _Cursor] | None = None
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

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        infos = []
        for i in range(len(batch["index"])):
            shard = Shard(**{name: int(batch[name][i]) for name in SHARD_FIELDS})
            infos.append(json.dumps(self.embed_shard(shard)))
        return {"info": np.array(infos, dtype=object)}

    def embed_shard(self, shard: Shard) -> dict[str, Any]:
        """Read, embed and write one shard; its info dict, or ``{"error", "error_type"}`` for an embedkit error."""
        from ...dataset import write_shard
        from ...embed import _stop_at_bad_row, build_table, model_texts

        try:
            if self.error is not None:
                raise self.error
            assert self.extractor is not None
            records = self._read(shard)
            # The reader numbers the rows of its one file; the output numbers rows across the whole input.
            records.row_numbers = [shard.first_row + r - shard.start for r in records.row_numbers]
            result = self.extractor.encode(model_texts(records))
            table = build_table(records, result, self.extractor.config.dtype, self.spec.text_column)
            if self.strict:
                _stop_at_bad_row(table, records)
            info = write_shard(self.staging, shard.index, table)
        except EmbedkitError as exc:
            return {"index": shard.index, "error": str(exc), "error_type": type(exc).__name__}
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

    def _read(self, shard: Shard) -> Records:
        if self.cursor is None or self.cursor[0] != shard.file or self.cursor[1].position > shard.start:
            self.cursor = (shard.file, _Cursor(self.spec, self.files[shard.file], shard.start, self.shard_rows))
        return self.cursor[1].take(shard)


__all__ = ["SHARD_FIELDS", "ShardEmbedder"]
