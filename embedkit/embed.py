"""The embed stage: a text file in, a features Parquet out (sources -> engine -> store).

One driver (:func:`embed`) owns everything but the model work: reading the input, parts, status rows, the
output contract (``PartWriter``: committed parts, resume, metadata, merge) and the summary. An engine
(``embedkit.engines``) only turns each part's texts into vectors, in this process or on a Ray cluster, so a fix
to any of the rest lands once for both.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from .config import ExtractConfig
from .engines import DEFAULT_PART_ROWS, Engine, JobEngine, LocalEngine
from .errors import ConfigError, InputError
from .extract.texts import EMBEDDED_STATUSES, without_surrogates
from .input_files import file_digest, file_size, refuse_uri_output
from .parts import PartWriter
from .progress import per_second, progress_bar
from .sources import Records, Source
from .spec import InputSpec, Runtime
from .store import FORMAT_VERSION, INFO_COLUMNS, library_versions, vectors_to_arrow

if TYPE_CHECKING:  # torch loads only when something is embedded (pydantic, for datasets, when one is written)
    from .dataset import DatasetWriter
    from .extract import EncodeResult, Extractor

log = logging.getLogger(__name__)


@dataclass
class EmbedSummary:
    """What an embed run did; ``bad_rows`` counts rows kept with a null embedding, by status."""

    output: Path
    rows: int = 0
    embedded: int = 0
    tokens: int = 0
    truncated: int = 0
    chunked: int = 0
    resumed_rows: int = 0
    seconds: float = 0.0  # the whole run, model loading included
    embed_seconds: float = 0.0  # the embedding loop alone, for the tokens/s figure
    bad_rows: dict[str, int] = field(default_factory=dict)
    repaired: int = 0
    cut: int = 0  # rows too long to read whole: embedded from their start (status cut)
    duplicate_ids: int = 0  # rows whose id was already used; all are kept, but ids no longer name one row
    backend: str = ""  # how backend auto or bf16 chose its engine (Extractor.backend_note); "" for the others

    def summary_lines(self) -> list[str]:
        bad = ", ".join(f"{n} {s}" for s, n in sorted(self.bad_rows.items()))
        parts = [f"{self.rows} rows -> {self.output}", f"{self.embedded} embedded"]
        if bad:
            parts.append(f"{sum(self.bad_rows.values())} kept with a null embedding ({bad})")
        if self.repaired:
            parts.append(f"{self.repaired} with invalid UTF-8 repaired")
        if self.truncated:
            parts.append(f"{self.truncated} truncated")
        if self.cut:
            parts.append(f"{self.cut} cut before tokenising (too long to read whole)")
        if self.chunked:
            parts.append(f"{self.chunked} split into windows")
        if self.duplicate_ids:
            parts.append(f"warning: {self.duplicate_ids} duplicate ids")
        if self.resumed_rows and self.resumed_rows == self.rows and not self.tokens:
            parts.append("already complete: nothing left to embed")  # --resume on a finished output
            return ["; ".join(parts)]
        if self.resumed_rows:
            parts.append(f"{self.resumed_rows} resumed from an earlier run")
        rate = self.tokens / self.embed_seconds if self.embed_seconds else 0.0
        parts.append(f"{self.seconds:.1f}s, {rate:,.0f} tokens/s")
        return ["; ".join(parts)] + ([f"backend {self.backend}"] if self.backend else [])


def build_metadata(extractor: Extractor, spec: InputSpec) -> dict[str, Any]:
    """The ``embedkit`` schema metadata: config, model facts, columns, versions, time.

    ``columns`` says where things are: ``text`` and ``id`` name the input's text and id columns (a later stage
    reading new texts of the same kind uses them unless told otherwise), ``keep`` the input columns stored in the
    file (the text column among them unless it was dropped), ``embeddings`` the vector columns.
    """
    loaded = extractor.loaded
    return {
        "format_version": FORMAT_VERSION,
        "config": extractor.config.to_dict(),
        "model": {
            "name": loaded.name,
            "revision": loaded.revision,
            "model_type": loaded.model_type,
            "hidden_size": loaded.hidden_size,
            "num_layers": loaded.n_layers,
            "max_positions": loaded.max_positions,
            "fingerprint": loaded.fingerprint,
        },  # checked on reload
        "columns": {
            "text": spec.text_column,
            "id": spec.id_column,
            "keep": list(spec.stored_columns),
            "embeddings": extractor.columns,
        },
        "versions": library_versions("torch", "transformers", "tokenizers", "pyarrow"),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def model_files(model: str) -> list[dict[str, Any]] | None:
    """Size and modification time of each file of a local model directory; None for a hub id.

    A checkpoint replaced at the same path is another model, and its vectors must not be mixed with the old
    ones in one output. Stat data, not a digest: hashing gigabytes of weights on every run would cost more
    than the check is worth, and a re-copied directory only costs a clear refusal.
    """
    path = Path(model).expanduser()
    if not path.is_dir():
        return None  # a hub id: the revision in the settings names it
    return [
        {"path": str(f.resolve()), "size": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns}
        for f in sorted(path.iterdir())
        if f.is_file()
    ]


def fingerprint(source: Source, config: ExtractConfig, part_rows: int) -> dict[str, Any]:
    """What a resumed run must share with the partial one: settings, model files, input content, columns."""
    return {
        "settings": config.vector_settings(),
        "model_files": model_files(config.model),
        "input": [file_digest(p) for p in source.files],
        "columns": {"text": source.text_column, "id": source.id_column, "keep": source.keep},
        "part_rows": part_rows,
    }


def build_table(
    records: Records, result: EncodeResult, dtype: str | Extractor, text_column: str | None = None
) -> pa.Table:
    """One output part in the Parquet contract's column order: id, keep..., info columns, embeddings.

    ``dtype`` is the storage dtype (an extractor, whose config names it, is accepted as well: predict passes one).
    ``text_column``, when it is among the kept columns, is stored as text even where rows hold other values.
    """
    if not isinstance(dtype, str):
        dtype = dtype.config.dtype
    status, error = list(result.status), list(result.error)
    for i, parse_error in enumerate(records.parse_errors):
        if parse_error is not None:
            status[i], error[i] = "malformed", parse_error
    valid = np.array([s in EMBEDDED_STATUSES for s in status], dtype=bool)
    ids = records.ids if records.ids is not None else pa.array(records.row_numbers, type=pa.int64())
    columns: dict[str, pa.Array] = {"id": _valid_utf8(ids, "id") if isinstance(ids, pa.Array) else _to_arrow(ids, "id")}
    for name, values in records.keep.items():
        if isinstance(values, pa.Array):
            columns[name] = _valid_utf8(values, name)
        else:
            columns[name] = _to_arrow(values, name, texts=name == text_column)
    columns["n_tokens"] = pa.array(np.where(valid, result.n_tokens, 0), type=pa.int32())
    columns["n_windows"] = pa.array(np.where(valid, result.n_windows, 0), type=pa.int32())
    columns["truncated"] = pa.array(result.truncated & valid)
    columns["status"] = pa.array(status, type=pa.string())
    columns["error"] = pa.array(error, type=pa.string())
    for name, matrix in result.vectors.items():
        columns[name] = vectors_to_arrow(matrix, valid, dtype)
    return pa.table(columns)


def _to_arrow(values: list, name: str, texts: bool = False) -> pa.Array:
    """A passed-through column as Arrow. ``texts``: the text column, whose bad rows the status column reports
    already (repaired, not_string, null), so it is converted without a warning and is always a string column
    (its strings as they are, other values as JSON text, NaN as null): parts of one output must agree on it."""
    if texts:
        values = [_as_text(v) for v in values]
    try:
        return pa.array(values, type=pa.string()) if texts else pa.array(values)
    except UnicodeEncodeError:
        # Readers decode with surrogateescape, so invalid UTF-8 in an id or --keep column arrives as lone
        # surrogates, which Parquet strings cannot hold: stored with U+FFFD, like a repaired text.
        if not texts:
            log.warning("column %r holds invalid UTF-8; stored with U+FFFD in its place", name)
        return _to_arrow(_repaired_values(values), name, texts)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # Mixed JSON types in one column (e.g. 3 and "3"): keep every value, as JSON text. Converted again: a
        # JSON string may hold lone surrogates.
        log.warning("column %r mixes value types; passing it through as JSON text", name)
        return _to_arrow([None if v is None else json.dumps(v, ensure_ascii=False, default=str) for v in values], name)


def _as_text(value: object) -> str | None:

    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return None
    return json.dumps(value, ensure_ascii=False, default=str)


def _valid_utf8(values: pa.Array, name: str) -> pa.Array:
    """A Parquet string column passed through, with invalid UTF-8 (which other writers let in) as U+FFFD.

    Left as it was, the output would break every reader that decodes the column (pyarrow's to_pylist, pandas).
    """
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return values
    try:
        values.validate(full=True)
        return values
    except pa.ArrowInvalid:
        log.warning("column %r holds invalid UTF-8; stored with U+FFFD in its place", name)
        binary = pa.binary() if pa.types.is_string(values.type) else pa.large_binary()
        raw = values.view(binary).to_pylist()
        return pa.array([None if b is None else b.decode("utf-8", "replace") for b in raw], type=values.type)


def _repaired_values(value):
    if isinstance(value, str):
        return without_surrogates(value)
    if isinstance(value, list):
        return [_repaired_values(v) for v in value]
    if isinstance(value, dict):
        return {_repaired_values(k): _repaired_values(v) for k, v in value.items()}
    return value


def model_texts(records: Records) -> list[object]:
    """What an engine embeds for a part: each row's text, None for a row that failed to parse."""
    return [None if e is not None else t for t, e in zip(records.texts, records.parse_errors)]


def embed(
    input: InputSpec | str | Path,
    output: str | Path,
    config: ExtractConfig | None = None,
    runtime: Runtime | None = None,
    *,
    engine: Engine | JobEngine | None = None,
    resume: bool = False,
    overwrite: bool = False,
    wait: bool = False,
    strict: bool = False,
    part_rows: int | None = None,
    shard_rows: int | None = None,
) -> EmbedSummary:
    """Embed every row of ``input`` into the Parquet file ``output``; one output row per input row.

    ``output`` ending in ``/`` (or ``shard_rows`` given) makes it a sharded dataset directory instead
    (:mod:`embedkit.dataset`): one shard per part of ``shard_rows`` rows, which every stage reads as one file.

    The one embed driver: it reads the input, cuts it into parts of ``part_rows`` rows, turns each part the
    ``engine`` embedded (``LocalEngine`` in this process by default, or ``RayEngine``) into output rows with their
    status, commits the parts, resumes, merges and counts. Engines only turn texts into vectors.

    Rows that cannot be embedded are kept with a null embedding and a status (or, with ``strict``, stop the
    run with an InputError). With ``resume``, a run that was killed continues where it stopped.

    The output is written by one process at a time: another embed of the same output raises BusyError (exit 7)
    at once, or with ``wait`` waits for it. ``overwrite`` keeps the old output until the new one is merged.
    """
    started = time.perf_counter()
    refuse_uri_output(output)
    spec = input if isinstance(input, InputSpec) else InputSpec(input)
    runtime = runtime or Runtime()
    if shard_rows is not None and part_rows is not None and shard_rows != part_rows:
        raise ConfigError(f"shard rows ({shard_rows}) and part rows ({part_rows}) differ: give one of them")
    part_rows = shard_rows or part_rows
    if isinstance(engine, JobEngine):  # the Ray engine: reads and writes on its workers, with this module's rows
        return engine.run(
            spec,
            Path(output),
            config,
            runtime,
            resume=resume,
            overwrite=overwrite,
            wait=wait,
            strict=strict,
            part_rows=shard_rows or part_rows,
        )
    engine = engine or LocalEngine()
    sharded = shard_rows is not None or str(output).endswith(("/", os.sep))
    part_rows = part_rows or engine.default_part_rows
    engine.check(runtime)  # contradictory options are the first thing to say
    source = spec.source()
    # The output's lock first: a second writer of the same output stops here (BusyError) before loading a model.
    writer: PartWriter | DatasetWriter
    if sharded:
        from .dataset import DatasetWriter

        writer = DatasetWriter(Path(output), wait=wait)
    else:
        writer = PartWriter(Path(output), wait=wait)
    with writer:
        extractor = engine.load(config, runtime, _job_tokens(source))
        config, meta = extractor.config, build_metadata(extractor, spec)
        backend_note = extractor.backend_note
        del extractor  # the Ray engine's is only a probe of the settings: its memory goes back now
        writer.start(
            {**fingerprint(source, config, part_rows), **engine.fingerprint}, resume=resume, overwrite=overwrite
        )
        if writer.complete:  # killed after the merge: the output is this job's, whole
            return _summarise(Path(output), writer.output_rows(), 0, time.perf_counter() - started, 0.0)
        resumed = writer.rows_done
        if isinstance(writer, PartWriter):
            done = {int(p["file"].removeprefix("part-").removesuffix(".parquet")) for p in writer.parts}
        else:  # shards are numbered by part, whatever order they finished in
            done = set(writer.done())
        first = next(i for i in range(len(done) + 1) if i not in done)  # parts before it need not even be parsed
        pending: dict[int, Records] = {}  # parts handed to the engine and not yet back

        def parts() -> Iterator[tuple[int, list[object]]]:
            for records in source.batches(part_rows, skip=first * part_rows):
                index = records.row_numbers[0] // part_rows
                if index not in done:
                    pending[index] = records
                    yield index, model_texts(records)

        bar = progress_bar("embed", source.total_rows(), unit="text", enabled=runtime.progress)
        with writer.abandoned_on_failure(), bar:
            bar.update(resumed)
            t0, tokens = time.perf_counter(), 0

            def on_batch(texts: int, batch_tokens: int) -> None:
                nonlocal tokens
                tokens += batch_tokens
                bar.update(texts)
                bar.set_postfix_str(f"{per_second(tokens, time.perf_counter() - t0)} tokens/s", refresh=False)

            with closing(engine.encode(parts(), on_batch)) as results:
                for index, result in results:
                    records = pending.pop(index)
                    table = build_table(records, result, config.dtype, spec.text_column)
                    bar.update(int((~result.valid).sum()))  # rows that never reach the model still count as done
                    if strict:
                        _stop_at_bad_row(table, records)
                    if engine.ordered and isinstance(writer, PartWriter):  # numbered in commit order = input order
                        writer.commit(table)
                    else:
                        writer.commit(table, index=index)
        if writer.rows_done == 0:
            writer.abandon()
            raise InputError(f"{spec.path} holds no data rows")
        if isinstance(writer, PartWriter):
            writer.parts.sort(key=lambda p: p["file"])  # an unordered engine committed them as they finished
        writer.finish(meta)
        # Counted under the lock: a writer waiting for it (--wait) may replace the output the moment it is free.
        summary = _summarise(Path(output), resumed, tokens, time.perf_counter() - started, time.perf_counter() - t0)
        summary.backend = backend_note
        return summary


def _job_tokens(source: Source) -> int | None:
    """The input's tokens, roughly, from its size (backends auto and bf16 measure their engines for large jobs)."""
    from .extract.backend_choice import estimate_tokens

    try:
        return estimate_tokens(sum(file_size(p) for p in source.files))
    except OSError:
        return None


def _stop_at_bad_row(table: pa.Table, records: Records) -> None:
    bad = np.flatnonzero(~np.isin(table.column("status").to_numpy(zero_copy_only=False), EMBEDDED_STATUSES))
    if bad.size:
        row = table.slice(int(bad[0]), 1).to_pylist()[0]
        raise InputError(
            f"row {records.row_numbers[int(bad[0])]} (id {row['id']!r}) is {row['status']}: {row['error']}"
        )


def embed_file(
    input: str | Path,
    output: str | Path,
    config: ExtractConfig | None = None,
    *,
    text_column: str = "text",
    id_column: str | None = None,
    keep: tuple[str, ...] | list[str] = (),
    keep_text: bool = True,
    fmt: str | None = None,
    device: str = "auto",
    batch_tokens: int | None = None,
    threads: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    wait: bool = False,
    strict: bool = False,
    progress: bool = True,
    part_rows: int = DEFAULT_PART_ROWS,
    shard_rows: int | None = None,
    extractor: Extractor | None = None,
) -> EmbedSummary:
    """:func:`embed` with the input and run-time settings as keyword arguments, in this process.

    The text column is stored too (under its own name) unless ``keep_text`` is False. ``extractor`` reuses a
    model already loaded with ``config``'s settings. ``shard_rows`` (or ``output`` ending in ``/``) writes a sharded
    dataset directory (:mod:`embedkit.dataset`).
    """
    return embed(
        InputSpec(input, fmt, text_column, id_column, tuple(keep), keep_text),
        output,
        config,
        Runtime(device=device, batch_tokens=batch_tokens, threads=threads, progress=progress),
        engine=LocalEngine(extractor),
        resume=resume,
        overwrite=overwrite,
        wait=wait,
        strict=strict,
        part_rows=None if shard_rows else part_rows,
        shard_rows=shard_rows,
    )


def _summarise(output: Path, resumed: int, tokens: int, seconds: float, embed_seconds: float) -> EmbedSummary:
    # Counted from the finished file (or dataset directory: pyarrow reads its shards and skips the "_" manifest), so
    # rows committed by an earlier (resumed) run are included.
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(output, columns=["id", "status", "truncated", "n_windows"])
    id_counts = pc.value_counts(table.column("id").combine_chunks()).field("counts")
    statuses = {
        str(r["values"]): int(r["counts"]) for r in pc.value_counts(table.column("status").combine_chunks()).to_pylist()
    }
    return EmbedSummary(
        output=output,
        rows=table.num_rows,
        embedded=sum(statuses.get(s, 0) for s in EMBEDDED_STATUSES),
        tokens=tokens,
        truncated=int(pc.sum(table.column("truncated")).as_py() or 0),
        chunked=int(pc.sum(pc.greater(table.column("n_windows"), 1)).as_py() or 0),
        resumed_rows=resumed,
        seconds=seconds,
        embed_seconds=embed_seconds,
        bad_rows={s: n for s, n in statuses.items() if s not in EMBEDDED_STATUSES},
        repaired=statuses.get("repaired", 0),
        cut=statuses.get("cut", 0),
        duplicate_ids=int(pc.sum(pc.subtract(id_counts, 1)).as_py() or 0),
    )


__all__ = [
    "DEFAULT_PART_ROWS",
    "EmbedSummary",
    "INFO_COLUMNS",
    "InputSpec",
    "Runtime",
    "build_metadata",
    "build_table",
    "embed",
    "embed_file",
    "model_texts",
]
