"""``embedkit index build``: plan, sample, train, add in a streaming pass, tune, write aside and switch in."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .. import artefact
from ..errors import ConfigError, InputError, choice_error
from ..store import open_features
from .adds import Adds, LocalAdds
from .faiss_ops import _faiss, _new_index, _pad, _pad_ids
from .files import ARTEFACT_KIND, INDEX_FORMAT, META_FILE, _named, _now, _write_data
from .plan import DEFAULT_MEMORY, METRICS, _train_rows, human_bytes, plan_index
from .recall import DEFAULT_TARGET_RECALL, EVAL_K, EVAL_QUERIES, Evaluation, tune
from .rescore import DEFAULT_FACTOR, RESCORE_FILE, build_entry, check_factor, open_source
from .rescore import summary_lines as rescore_lines
from .rows import BATCH_ROWS, _check_ids, _column_dim, _progress, _skipped_lines
from .settings import choose_store, store_note

log = logging.getLogger(__name__)

# The peak is the whole process's (Python, pyarrow, FAISS, any model loaded before): beside a small index it
# reads as the index's own size, so the summary shows it only once the index itself is this large.
PEAK_SHOWN_FROM_BYTES = 64 * 2**20

HNSW_SERIAL_NOTE = (
    "an HNSW graph cannot be merged from parts built apart: its rows were added in this process (--kind ivf or "
    "flat adds them on the Ray workers)"
)


def _peak_rss_bytes() -> int:
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux
    except (ImportError, OSError):
        return 0


@dataclass
class BuildReport:
    """What a build (or add) produced, with the figures it measured."""

    directory: Path
    kind: str
    factory: str
    metric: str
    rows: int
    dim: int
    skipped_null_rows: int
    build_seconds: float
    index_bytes: int
    peak_rss_bytes: int
    recall_at_10: float | None
    queries_per_second: float | None
    params: dict[str, int]
    target_recall: float
    eval_queries: int
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    skipped_nonfinite_rows: int = 0
    skipped_nonfinite_ids: list[Any] = field(default_factory=list)  # the first few, to find them
    recall_interval: tuple[float, float] | None = None  # 95% interval of recall_at_10 (``wilson_interval``)
    eval_duplicates: int = 0  # held-out queries left out of the evaluation: exact copies of indexed rows
    stored_columns: list[str] = field(default_factory=list)
    vector_dtype: str = "float32"  # storage dtype of the indexed column
    rescore: dict[str, Any] | None = None  # index.json's "rescore" entry when candidates are re-scored
    codes: str = "float32"  # how FAISS holds the vectors: float32, sq8 (8-bit scalar quantizer) or pq
    bytes_per_vector: float = 0.0  # FAISS index file size / rows

    def summary_lines(self) -> list[str]:
        params = ", ".join(f"{k}={v}" for k, v in self.params.items()) or "exact"
        out = [
            f"{self.rows:,} vectors (dim {self.dim}, {self.metric}) -> {self.directory}",
            f"kind {self.kind} ({self.factory}){': ' + self.reason if self.reason else ''}",
            f"build {self.build_seconds:.1f}s, index {human_bytes(self.index_bytes)} "
            f"({self.codes} codes, {self.bytes_per_vector:,.0f} bytes/vector)"
            + (
                f"; peak memory of this process {human_bytes(self.peak_rss_bytes)}"
                if self.index_bytes >= PEAK_SHOWN_FROM_BYTES and self.peak_rss_bytes
                else ""
            ),
        ]
        if self.stored_columns:
            out.append(f"stored for display beside the ids: {', '.join(self.stored_columns)}")
        if self.recall_at_10 is not None:
            low = self.recall_interval[0] if self.recall_interval else self.recall_at_10
            reached = "" if low >= self.target_recall - 1e-9 else f" (target {self.target_recall} not reached)"
            interval = ""
            if self.recall_interval:
                interval = f" (95% CI {self.recall_interval[0]:.3f}-{self.recall_interval[1]:.3f})"
            dropped = f", {self.eval_duplicates} copies of indexed rows left out" if self.eval_duplicates else ""
            out.append(
                f"recall@10 {self.recall_at_10:.3f}{interval}{reached} at {params} on {self.eval_queries} held-out "
                f"queries (new to the index when tuned{dropped}), {self.queries_per_second:,.0f} queries/s"
            )
        out += rescore_lines(self.rescore, self.vector_dtype)
        out += _skipped_lines(self.skipped_null_rows, self.skipped_nonfinite_rows, self.skipped_nonfinite_ids)
        return out + [f"note: {note}" for note in self.notes]

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items()}
        d["directory"] = str(self.directory)
        return d


def build_index(
    features: str | Path,
    output: str | Path,
    *,
    kind: str = "auto",
    metric: str = "cosine",
    memory: str | int = DEFAULT_MEMORY,
    column: str | None = None,
    store: Sequence[str] | None = None,
    store_text: bool = True,
    target_recall: float = DEFAULT_TARGET_RECALL,
    eval_queries: int = EVAL_QUERIES,
    batch_rows: int = BATCH_ROWS,
    overwrite: bool = False,
    progress: bool = False,
    seed: int = 0,
    wait: bool = False,
    rescore_with: str | Path | None = None,
    rescore_factor: int = DEFAULT_FACTOR,
    codes: str | None = None,
    engine: Adds | None = None,
) -> BuildReport:
    """Build a FAISS index of one embedding column of a features file into the directory ``output``.

    The index is built aside under ``output``'s lock and switched in complete: with ``overwrite`` the previous
    index stays usable until then, and survives a failure or a kill.

    Args:
        features: Parquet written by ``embedkit embed``.
        output: index directory (created; must not hold an index unless ``overwrite``).
        kind: ``auto``, ``flat``, ``hnsw``, ``ivf`` or ``ivfpq``.
        metric: ``cosine`` (vectors normalised, inner product), ``ip`` or ``l2``.
        memory: budget for the index in RAM (``4GB``); ``auto`` picks the best kind that fits it.
        column: embedding column (needed when the file has several).
        store: columns kept beside the ids for display, besides the text column.
        store_text: keep the features' text column (the recorded input text column, else ``text``) for display.
        target_recall: recall@10 that nprobe / efSearch are tuned to reach on held-out queries.
        eval_queries: how many rows are drawn as held-out queries.
        batch_rows: rows per streamed batch (bounds memory).
        wait: wait for another process writing ``output`` instead of failing with BusyError.
        rescore_with: for int8 / binary features, the float32 / float16 features of the same rows (same settings
            otherwise): kept as ``vectors.npy``, every search re-ranks its top ``k x rescore_factor`` candidates by
            them (:mod:`embedkit.index.rescore`).
        codes: how a flat, hnsw or ivf index holds the vectors (``float32`` or ``sq8``, FAISS's 8-bit scalar
            quantizer: a quarter of the RAM); None: sq8 for int8 features (they hold 8 bits a dimension anyway),
            float32 otherwise. Binary features are held as float32 (no packed-bit index yet).
        engine: who adds the vectors: None in this process; :class:`~embedkit.index.ray_build.RayAdds` adds the
            shards of a sharded dataset on Ray workers and merges them here into the same index. An HNSW graph
            cannot be merged from parts: it is built in this process, with a note.

    Returns:
        A BuildReport with build time, index size, recall@10 and queries/s.
    """
    started = time.perf_counter()
    if metric not in METRICS:
        raise choice_error("metric", metric, METRICS)
    if not 0 < target_recall <= 1:
        raise ConfigError(f"target recall must be in (0, 1], got {target_recall}")
    if eval_queries < 0:
        raise ConfigError(f"eval_queries must be >= 0, got {eval_queries}")
    feats = open_features(features)
    column = feats.embedding_column(column)
    store, text_column = choose_store(feats, store, store_text)
    col_config = feats.column_config(column)
    dim = _column_dim(feats, column)
    floats = open_source(rescore_with, feats, column, col_config.dtype) if rescore_with is not None else None
    rescore_factor = check_factor(rescore_factor)
    output = _named(output)
    if codes is None:
        codes = "sq8" if col_config.dtype == "int8" else "float32"
    if engine is not None:
        engine.check(feats)
    notes = store_note(feats, store, store_text)

    reader = engine or LocalAdds()
    with (
        artefact.writing_dir(
            output, kind=ARTEFACT_KIND, manifest_name=META_FILE, overwrite=overwrite, wait=wait
        ) as stage,
        reader.running(),
    ):
        plan = plan_index(kind, feats.num_rows, dim, memory, codes)
        samples = reader.draw_samples(
            feats, column, _train_rows(plan, feats.num_rows), eval_queries, metric, seed, batch_rows
        )
        if samples.rows != feats.num_rows:  # null or non-finite rows: plan for what will really be indexed
            plan = plan_index(kind, samples.rows, dim, memory, codes)
        log.info("building %s (%s) for %d x %d: %s", plan.kind, plan.factory, samples.rows, dim, plan.reason)
        index = _new_index(plan, dim, metric, samples.train[: _train_rows(plan, samples.rows)])
        samples.train = np.empty((0, dim), np.float32)  # free the sample before the add pass (a [:0] view keeps it)

        # The held-out queries stay out of the index until it is tuned, then are added last: a query that is a
        # row of the index finds itself and the graph or list around it, and leave-one-out on such rows reported
        # 0.972 where new text queries measured 0.934 (issue #16). Queries identical to an indexed row are
        # dropped from the evaluation too: they are found trivially, and a new query rarely is such a copy.
        # A flat float32 index is exact by construction: nothing to tune or estimate, and its rows keep file order.
        # Flat SQ8 codes are not exact: their recall is measured like any approximate index's.
        exact = plan.kind == "flat" and plan.codes == "float32"
        held = samples.query_positions if not exact else samples.query_positions[:0]
        k_eval = min(EVAL_K, samples.rows - len(held))
        heap = _faiss().ResultHeap(len(held), k_eval, keep_max=metric != "l2") if k_eval > 0 and len(held) else None
        adds = LocalAdds() if plan.kind == "hnsw" else reader
        if adds is not reader and engine is not None:
            notes.append(HNSW_SERIAL_NOTE)
        with _progress(feats.num_rows, progress, "indexing") as bar:
            index, added = adds.add(
                index, plan, feats, column, store, metric, held, samples.queries, k_eval, batch_rows, bar
            )
        if added.positions != samples.rows:
            raise InputError(
                f"{features}: {added.positions} usable rows were indexed where the first pass counted {samples.rows}; "
                "did the features change during the build?"
            )
        found = added.found  # held-out queries with an exact copy among the indexed rows
        if heap is not None:
            for d, i in added.knn:
                heap.add_result(_pad(d, k_eval, metric), _pad_ids(i, k_eval))
        tables, held_tables = added.tables, added.held_tables

        params: dict[str, Any] = {}
        recall: float | None = None
        interval: list[float] | None = None
        qps: float | None = None
        n_eval = len(held)
        if heap is not None:
            heap.finalize()
            keep = ~found
            n_eval = int(keep.sum())
            if n_eval:
                evaluation = Evaluation(samples.queries[keep], None, heap.I[keep], k_eval)
                params, (recall, *interval) = tune(index, evaluation, target_recall)
                qps = evaluation.queries_per_second(index)
        elif exact and len(samples.queries):
            recall, interval, n_eval = 1.0, [1.0, 1.0], len(samples.queries)
            k_qps = min(EVAL_K, samples.rows)
            qps = Evaluation(samples.queries, None, np.empty((0, k_qps)), k_qps).queries_per_second(index)
        if len(held):
            index.add(samples.queries)  # in position order, as held_tables
        ids = pa.concat_tables(tables + held_tables)
        _check_ids(ids, feats.path)
        rescoring = None
        if floats is not None:
            ntotal = int(index.ntotal)
            evaluated = np.arange(ntotal - len(held), ntotal) if len(held) else samples.query_positions
            rescoring = build_entry(
                stage.path(RESCORE_FILE), index, ids, floats, column, metric, rescore_factor, evaluated, batch_rows
            )
        nonfinite = samples.nonfinite.rows
        null_rows = feats.num_rows - samples.rows - nonfinite
        meta = {
            "format": INDEX_FORMAT,
            "index_kind": plan.kind,
            "factory": plan.factory,
            "codes": {"type": plan.codes},
            "metric": metric,
            "dim": dim,
            "rows": int(index.ntotal),
            "column": column,
            "stored_columns": store,
            "text_column": text_column,
            "input_columns": feats.input_columns(),
            "params": params,
            "config": col_config.to_dict(),
            "model": feats.meta.get("model", {}),
            "generation": 0,
            "source": {
                "path": str(Path(features).resolve()),
                "rows": feats.num_rows,
                "skipped_null_rows": null_rows,
                "skipped_nonfinite_rows": nonfinite,
            },
            "build": {
                "reason": plan.reason,
                "target_recall": target_recall,
                "recall_at_10": recall,
                "recall_interval": interval,
                "eval_queries": n_eval,
                "eval_duplicates": int(found.sum()),
                "queries_per_second": qps,
                "created_at": _now(),
                "adds": [],
            },
        }
        if rescoring is not None:
            meta["rescore"] = rescoring
        index_bytes = _write_data(stage, index, ids)
        meta["codes"]["bytes_per_vector"] = round(index_bytes / max(1, int(index.ntotal)), 1)
        meta["build"]["seconds"] = round(time.perf_counter() - started, 3)
        stage.seal(meta)
    return BuildReport(
        output,
        plan.kind,
        plan.factory,
        metric,
        int(index.ntotal),
        dim,
        null_rows,
        meta["build"]["seconds"],
        index_bytes,
        _peak_rss_bytes(),
        recall,
        qps,
        params,
        target_recall,
        n_eval,
        plan.reason,
        notes,
        nonfinite,
        samples.nonfinite.examples,
        (interval[0], interval[1]) if interval else None,
        int(found.sum()),
        store,
        col_config.dtype,
        rescoring,
        plan.codes,
        meta["codes"]["bytes_per_vector"],
    )
