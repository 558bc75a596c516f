"""``predict_file``: classify raw text or stored features with a saved model and stream the predictions to a file."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import artefact
from ..errors import ConfigError, IncompatibleError, InputError, OutputError
from ..sources import Source
from ..spec import InputSpec, Runtime
from ..store import Features, is_features_file, matrix_from_arrow, open_features
from ..vectors import float_array  # issue 22: compact vectors
from .metrics import _jsonable
from .model import ClassifierModel, _differences, load_model

log = logging.getLogger(__name__)


OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


NON_FINITE_STATUS = "non_finite"  # predict's status of a row whose stored vector holds NaN or infinity


@dataclass
class PredictSummary:
    output: Path
    rows: int = 0
    predicted: int = 0
    input_kind: str = "text"
    bad_rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def summary_lines(self) -> list[str]:
        parts = [f"{self.rows} rows -> {self.output}", f"{self.predicted} predicted ({self.input_kind} input)"]
        if self.bad_rows:
            bad = ", ".join(f"{n} {s}" for s, n in sorted(self.bad_rows.items()))
            parts.append(f"{sum(self.bad_rows.values())} kept with no prediction ({bad})")
        parts.append(f"{self.seconds:.1f}s")
        return ["; ".join(parts)]


def proba_column(label: Any) -> str:
    return f"proba_{label}"


def matching_column(model: ClassifierModel, feats: Features, column: str | None = None) -> str:
    """The embedding column of ``feats`` made with the model's settings; IncompatibleError naming what differs."""
    wanted = model.config.vector_settings()
    candidates = [feats.embedding_column(column)] if column else feats.embedding_columns
    if not candidates:
        raise InputError(f"{feats.path} has no embedding column; columns: {', '.join(feats.schema.names)}")
    for name in candidates:
        if (
            feats.column_config(name).vector_settings() == wanted
            and feats.schema.field(name).type.list_size == model.dim
        ):
            if not feats.column_config(name).model_difference(model.config):
                return name
    closest = model.manifest["column"] if model.manifest["column"] in candidates else candidates[0]
    found = feats.column_config(closest).vector_settings()
    other_model = feats.column_config(closest).model_difference(model.config)
    raise IncompatibleError(
        f"{feats.path} was embedded with other settings than the model's training data (column {closest!r}): "
        f"{_differences(wanted, found) or other_model or 'dimensions differ'}; "
        "embed the raw text again, or pass the raw text to predict"
    )


class _OutputWriter:
    """Streams prediction tables to Parquet, CSV or JSONL into the temp file ``artefact.writing_file`` renames.

    Not ``parts.PartWriter``: that one writes resumable Parquet parts under a ``.partial`` directory and merges
    them, for features; predictions are one pass, in three formats, into one temp file renamed at the end.
    """

    def __init__(self, tmp: Path, kind: str) -> None:
        self.tmp, self.kind = tmp, kind
        self.writer: Any = None  # a ParquetWriter, a CSVWriter or a text file, chosen by kind on the first write
        self.schema: pa.Schema | None = None

    def write(self, table: pa.Table) -> None:
        if self.schema is None:
            self.schema = table.schema
            if self.kind == "parquet":
                self.writer = pq.ParquetWriter(self.tmp, self.schema)
            elif self.kind == "csv":
                import pyarrow.csv as pacsv

                self.writer = pacsv.CSVWriter(self.tmp, self.schema)
            else:
                self.writer = open(self.tmp, "w", encoding="utf-8")
        table = table.cast(self.schema)
        if self.kind == "jsonl":
            for row in table.to_pylist():
                self.writer.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        else:
            self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _prediction_table(
    model: ClassifierModel, base: pa.Table, vectors: pa.Array | pa.ChunkedArray, status: pa.Array
) -> pa.Table:
    """``base`` (id + keep columns) plus status, prediction and one probability column per class."""
    if isinstance(vectors, pa.ChunkedArray):
        vectors = vectors.combine_chunks()
    valid = pc.is_valid(vectors).to_numpy(zero_copy_only=False).copy()
    matrix = matrix_from_arrow(vectors.filter(pa.array(valid))) if valid.any() else np.empty((0, model.dim))
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        # A vector holding NaN/inf (a damaged or hand-made features file) is kept like a null one: no prediction,
        # and a status saying why, so one bad row neither stops the run nor goes unnoticed.
        broken = np.zeros(len(valid), dtype=bool)
        broken[np.flatnonzero(valid)[~finite]] = True
        valid &= ~broken
        status = pc.if_else(pa.array(broken), pa.scalar(NON_FINITE_STATUS), pc.cast(status, pa.string()))
        matrix = matrix[finite]
    rows = np.flatnonzero(valid)
    labels, proba = model.predict_vectors(matrix)
    predicted: list[Any] = [None] * len(valid)
    for i, label in zip(rows, labels.tolist()):
        predicted[i] = label
    label_type = {"int": pa.int64(), "bool": pa.bool_()}.get(model.manifest.get("label_type", ""), pa.string())
    table = base.append_column("status", status).append_column("prediction", pa.array(predicted, type=label_type))
    if proba is not None:
        for k, label in enumerate(model.classes):
            column = np.full(len(valid), np.nan)
            column[rows] = proba[:, k]
            table = table.append_column(
                proba_column(_jsonable(label)), pa.array(column, mask=~valid, type=pa.float32())
            )
    return table


def _text_batches(model: ClassifierModel, spec: InputSpec, runtime: Runtime, batch_rows: int):
    from ..embed import build_table

    text_column = spec.text_column or model.text_column
    keep = list(spec.keep)
    try:
        source = Source(
            spec.path, text_column=text_column, id_column=spec.id_column or model.id_column, keep=keep, fmt=spec.format
        )
    except InputError:
        # The id column recorded at training time is a default, not a requirement: new input without it is
        # numbered by row. Any other problem (the text column missing) is raised again without it.
        if spec.id_column is not None or model.id_column is None:
            raise
        source = Source(spec.path, text_column=text_column, keep=keep, fmt=spec.format)
        log.info("%s has no column %r (the model's id column): rows are numbered instead", spec.path, model.id_column)
    extractor = model.extractor(runtime)
    column = extractor.columns[0]
    from tqdm.auto import tqdm

    bar = tqdm(total=source.total_rows(), unit="text", file=sys.stderr, disable=not runtime.progress, desc="predict")
    with bar:
        for records in source.batches(batch_rows):
            texts = [None if e is not None else t for t, e in zip(records.texts, records.parse_errors)]
            table = build_table(records, extractor.encode(texts), extractor)
            base = table.select(["id", *keep])
            yield _prediction_table(model, base, table.column(column), table.column("status").combine_chunks())
            bar.update(len(records))


def _feature_batches(model: ClassifierModel, input, column, keep, batch_rows):
    feats = open_features(input)
    column = matching_column(model, feats, column)
    feats.require_columns(["id", *keep])
    has_status = "status" in feats.schema.names
    wanted = list(dict.fromkeys(["id", *keep, *(["status"] if has_status else []), column]))
    # A features file or a sharded dataset directory, batch after batch (Features.iter_tables reports bad Parquet).
    for batch in feats.iter_tables(wanted, batch_rows):
        # issue 22: compact (int8/binary) stored vectors as float32; the int8 scale lives in the file's metadata
        vectors = float_array(batch.column(column), feats.vector_encoding(column))
        if has_status:
            status = batch.column("status").combine_chunks()
        else:
            status = pc.if_else(pc.is_valid(vectors), "ok", "null_embedding")
        yield _prediction_table(model, batch.select(["id", *keep]), vectors, status)


def predict_file(
    model_dir: str | Path,
    input: InputSpec | str | Path,
    output: str | Path,
    runtime: Runtime | None = None,
    *,
    text_column: str | None = None,
    id_column: str | None = None,
    keep: tuple[str, ...] | list[str] = (),
    column: str | None = None,
    fmt: str | None = None,
    overwrite: bool = False,
    wait: bool = False,
    progress: bool | None = None,
    batch_rows: int = 4096,
    trust_remote_code: bool = False,
) -> PredictSummary:
    """Classify every row of ``input`` with a saved model and write id, keep columns, status, prediction, proba_*.

    ``input`` is either a features Parquet written by ``embedkit embed`` (its vectors are used as they are, and it
    must have been embedded with the model's settings) or raw text in any format ``Source`` reads (embedded here
    with the model's stored settings). Raw text is read from ``text_column`` and its ids from ``id_column``; left
    None, the columns the training data was read from are used (recorded in the model; ``text`` and row numbers
    for older models, and row numbers when the input lacks the recorded id column). Rows that cannot be embedded
    are kept with a null prediction and their status. The output format follows the extension of ``output``
    (.parquet, .csv, .jsonl).

    ``input`` may be an :class:`~embedkit.spec.InputSpec` (its ``text_column`` None: the model's) and ``runtime``
    a :class:`~embedkit.spec.Runtime`; the column keywords and ``progress``, where set, are put over them.

    The output is written under its lock (``wait``: wait for another writer instead of a BusyError) to a file
    beside it, renamed onto ``output`` only once complete: an existing output stays whole until then.
    """
    started = time.perf_counter()
    output = Path(output)
    kind = OUTPUT_FORMATS.get(output.suffix.lower())
    if kind is None:
        raise ConfigError(
            f"cannot tell the output format of {output}; use an extension among {', '.join(OUTPUT_FORMATS)}"
        )
    if output.is_dir():
        raise OutputError(f"output {output} is a directory; give a file path")
    if output.exists() and not overwrite:
        raise OutputError(f"output {output} exists; pass --overwrite to replace it")
    spec = InputSpec.of(
        input,
        {"text_column": None, "keep_text": False},
        text_column=text_column,
        id_column=id_column,
        keep=keep,
        format=fmt,
    )
    runtime = Runtime.of(runtime, progress=progress)
    model = load_model(model_dir, trust_remote_code=trust_remote_code)
    keep = list(spec.keep)
    clash = [c for c in keep if c in ("id", "status", "prediction") or c.startswith("proba_")]
    if clash:
        raise ConfigError(f"--keep column(s) {', '.join(clash)} clash with predict's own output columns")
    features_input = is_features_file(spec.path)
    if features_input:
        batches = _feature_batches(model, spec.path, column, keep, batch_rows)
    else:
        batches = _text_batches(model, spec, runtime, batch_rows)
    summary = PredictSummary(output=output, input_kind="features" if features_input else "text")
    bad: Counter = Counter()
    with artefact.writing_file(output, overwrite=overwrite, wait=wait) as tmp:
        writer = _OutputWriter(tmp, kind)
        try:
            for table in batches:
                writer.write(table)
                summary.rows += table.num_rows
                predicted = pc.is_valid(table.column("prediction"))
                summary.predicted += int(pc.sum(predicted).as_py() or 0)
                bad.update(table.column("status").filter(pc.invert(predicted)).to_pylist())
        finally:
            writer.close()
        if summary.rows == 0:
            raise InputError(f"{spec.path} holds no data rows")
    summary.bad_rows = {str(k): v for k, v in bad.items()}
    summary.seconds = time.perf_counter() - started
    return summary
