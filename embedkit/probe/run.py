"""The probe stage: labelled texts in, one forward pass, a scored report directory out (:func:`probe_file`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import artefact
from ..classify import DEFAULT_CLASSIFIER, check_classes
from ..config import ExtractConfig
from ..errors import ConfigError, choice_error
from ..plots import probe_plot
from ..spec import InputSpec, Runtime
from ..store import INFO_COLUMNS, library_versions, open_features
from .commands import embed_command, train_command
from .files import (
    FILE_CSV,
    FILE_FEATURES,
    FILE_JSON,
    FILE_PLOT,
    FORMAT_VERSION,
    KIND,
    MANIFEST,
    inside_report,
    write_csv,
)
from .labels import SAMPLE_TEXT, format_skipped, scan_labels, stratified_sample, write_sample
from .layers import ALL_LAYERS, parse_layers, probe_config
from .report import format_table
from .score import DEFAULT_CV, DEFAULT_METRIC, METRICS, PROBE_OPTIONS, PairScore, best_pair, score_features

log = logging.getLogger(__name__)

DEFAULT_POOLINGS = ("mean", "last", "weighted-mean")


@dataclass
class ProbeResult:
    """A finished probe: the scores, the best pair, how to reproduce it, and where the report went."""

    output_dir: Path
    scores: list[PairScore]
    best: PairScore
    summary: dict[str, Any]

    @property
    def embed_command(self) -> str:
        return self.summary["best"]["embed_command"]

    def summary_lines(self) -> list[str]:
        """What ``embedkit probe`` prints."""
        s = self.summary
        rows = s["rows"]
        lines = [
            f"{s['model']}: {rows['scored']} rows, {len(s['classes'])} classes, {s['cv']}-fold CV "
            f"({s['classifier']}, standardised), {len(self.scores)} (layer, pooling) pairs"
        ]
        if rows.get("sampled_from"):
            lines.append(
                f"stratified sample of {rows['sampled']} of {rows['sampled_from']} usable rows (seed {s['seed']})"
            )
        if any(rows["skipped"].values()):
            lines.append(f"skipped {sum(rows['skipped'].values())} row(s): {format_skipped(rows['skipped'])}")
        lines += [format_table(self.scores, self.best), ""]
        b = s["best"]
        lines.append(
            f"best by {s['metric']}: layer {b['layer']}, pooling {b['pooling']} "
            f"(accuracy {b['accuracy_mean']:.4f}, macro-F1 {b['macro_f1_mean']:.4f})"
        )
        lines.append(f"reproduce: {b['embed_command']}")
        lines.append(f"     then: {b['train_command']}")
        lines.append(
            f"report -> {self.output_dir} ({FILE_CSV}, {FILE_PLOT}, {FILE_JSON}"
            + (f"; features -> {s['features']}" if s.get("features") else "")
            + ")"
        )
        return lines


def probe_file(
    input: InputSpec | str | Path,
    label_column: str,
    output_dir: str | Path,
    config: ExtractConfig | None = None,
    runtime: Runtime | None = None,
    *,
    layers: str | Sequence[int] = ALL_LAYERS,
    text_column: str | None = None,
    id_column: str | None = None,
    fmt: str | None = None,
    cv: int = DEFAULT_CV,
    sample: int | None = None,
    seed: int = 0,
    nmi: bool = False,
    metric: str = DEFAULT_METRIC,
    save_features: str | Path | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    wait: bool = False,
) -> ProbeResult:
    """Score every (layer, pooling) pair of ``config`` on the labelled texts of ``input``; write a report.

    Args:
        input: raw labelled text (CSV, TSV, JSONL, Parquet; file, directory or glob), or an
            :class:`~embedkit.spec.InputSpec` naming it and its text and id columns (its ``keep`` is not used: the
            label column is what the probe keeps). ``text_column``, ``id_column`` and ``fmt``, where set, are put
            over it.
        label_column: column holding the classes.
        output_dir: report directory (created; an existing report is replaced only with ``overwrite``).
        config: extraction settings (model, poolings, max_length, ...); its ``layers`` are replaced by ``layers``.
        runtime: device, batch size, threads and progress bar [default: ``Runtime()``]; ``progress``, where
            set, is put over it.
        layers: ``"all"`` (0 = embeddings through the last block) or indices such as ``(0, 3, 6, -1)``.
        cv: stratified folds of the probe (the same splits as ``embedkit train --cv`` with ``seed``).
        sample: probe a seeded stratified sample of this many usable rows (None = every row).
        nmi: also score each pair by the NMI of a k-means clustering (k = number of classes).
        metric: what picks the best pair: ``macro-f1`` (default), ``accuracy`` or ``nmi`` (needs ``nmi``).
        save_features: also keep the collected features at this Parquet path (a normal embedkit features file:
            one column per pair, the label column kept). A path directly inside ``output_dir`` makes the file part
            of the report (listed and verified in its manifest).
        overwrite: replace an existing report (and ``save_features`` file); each stays whole until its replacement
            is complete.
        wait: if another process is writing the report (or ``save_features``), wait for it instead of BusyError.

    Raises:
        InputError: missing file or column (the message lists the columns), no usable row, a single class, a
            class with fewer rows than ``cv``.
        ConfigError: bad layers, poolings, cv, sample or metric.
        OutputError: the report directory or ``save_features`` cannot be written or already exists.
        BusyError: another process is writing the report directory or ``save_features`` (without ``wait``).
    """
    from ..embed import embed

    started = time.perf_counter()
    spec = InputSpec.of(input, text_column=text_column, id_column=id_column, format=fmt)
    spec = dataclasses.replace(spec, text_column=spec.text_column or "text", keep=(label_column,), keep_text=True)
    runtime = Runtime.of(runtime, progress=progress)
    config = config or ExtractConfig(pooling=DEFAULT_POOLINGS)
    if cv < 2:
        raise ConfigError(f"--cv needs at least 2 folds, got {cv}")
    if sample is not None and sample < 2:
        raise ConfigError(f"--sample needs at least 2 rows, got {sample}")
    if metric not in METRICS:
        raise choice_error("probe metric", metric, METRICS)
    if metric == "nmi" and not nmi:
        raise ConfigError("--metric nmi needs --nmi")
    if label_column == spec.text_column:
        raise ConfigError(f"the label column and the text column are both {label_column!r}")
    if label_column == spec.id_column:
        raise ConfigError(f"the label column and the id column are both {label_column!r}")
    if label_column in ("id", *INFO_COLUMNS) or label_column.startswith("embedding"):
        raise ConfigError(f"label column {label_column!r} has the name of a column embedkit writes itself; rename it")
    layers = parse_layers(layers)
    output_dir = Path(output_dir)
    in_report = save_features is not None and inside_report(Path(save_features), output_dir)
    # Both outputs are locked before any reading: a second writer of either fails (or waits) at once. The features
    # file is renamed into place first, then the report is switched in; a kill before either leaves the old ones.
    with ExitStack() as outputs:
        stage = outputs.enter_context(
            artefact.writing_dir(
                output_dir,
                kind=KIND,
                manifest_name=MANIFEST,
                overwrite=overwrite,
                wait=wait,
                former_names=(FILE_CSV, FILE_JSON, FILE_PLOT),
            )
        )
        features_target = None
        if save_features is not None and in_report:
            features_target = stage.path(Path(save_features).name)
        elif save_features is not None:
            features_target = outputs.enter_context(
                artefact.writing_file(save_features, overwrite=overwrite, wait=wait)
            )
        source = dataclasses.replace(spec, keep_text=False).source()
        scan = scan_labels(source, label_column)
        rows: dict[str, Any] = {"input": scan.rows, "skipped": dict(scan.skipped)}
        check_classes(scan.class_counts, label_column, cv=cv, test_size=0)
        chosen = None
        if sample is not None and sample < len(scan.usable):
            chosen = stratified_sample(scan.labels, sample, seed, min_per_class=cv)
            rows.update(sampled=int(len(chosen)), sampled_from=len(scan.usable))
            log.info("probing a stratified sample of %d of %d usable rows", len(chosen), len(scan.usable))
        full_config = probe_config(config, layers)

        # Scratch space inside the staging directory: a kill leaves it where the next writer cleans up anyway.
        scratch = Path(tempfile.mkdtemp(prefix="scratch-", dir=stage.directory))
        try:
            features = scratch / FILE_FEATURES
            embed_spec = spec
            if chosen is not None:
                sample_file = scratch / "sample.parquet"
                write_sample(source, label_column, {scan.usable[i] for i in chosen}, sample_file)
                embed_spec = InputSpec(sample_file, "parquet", SAMPLE_TEXT, "id", (label_column,))
            embedded = embed(embed_spec, features, full_config, runtime)
            t0 = time.perf_counter()
            scores, _ = score_features(features, label_column, cv=cv, seed=seed, nmi=nmi, progress=runtime.progress)
            score_seconds = time.perf_counter() - t0
            resolved = open_features(features).config
            if features_target is not None:
                shutil.move(features, features_target)  # onto the report's file, or the temp file renamed at the end
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

        rows["scored"] = scores[0].rows
        unexpected = (len(chosen) if chosen is not None else len(scan.usable)) - rows["scored"]
        if unexpected > 0:  # rows the scan took for usable but the embed stage could not embed
            rows["skipped"]["not embedded"] = unexpected
        best = best_pair(scores, metric)
        classes = sorted(scan.class_counts, key=str)
        embed_cmd = embed_command(
            spec.path,
            config,
            best.layer,
            best.pooling,
            label_column=label_column,
            text_column=spec.text_column or "text",
            id_column=spec.id_column,
            fmt=spec.format,
        )
        summary: dict[str, Any] = {
            "kind": "embedkit-probe",
            "input": str(spec.path),
            "model": config.model,
            "label_column": label_column,
            "classes": classes,
            "class_counts": {str(c): n for c, n in scan.class_counts.items()},
            "rows": rows,
            "cv": cv,
            "seed": seed,
            "classifier": DEFAULT_CLASSIFIER,
            "classifier_options": PROBE_OPTIONS.to_dict(),
            "metric": metric,
            "extract_config": resolved.to_dict(),
            "table": [s.row() for s in scores],
            "folds": {s.column: {"accuracy": s.fold_accuracy, "macro_f1": s.fold_macro_f1} for s in scores},
            "best": {
                **best.row(),
                "embed_command": embed_cmd,
                "train_command": train_command(label_column, cv, seed),
                "extract_config": resolved.replace(layers=(best.layer,), pooling=(best.pooling,)).to_dict(),
            },
            "features": str(save_features) if save_features else None,
            "files": [
                FILE_CSV,
                FILE_PLOT,
                FILE_JSON,
                *([Path(save_features).name] if save_features is not None and in_report else []),
            ],
            "seconds": {
                "embed": round(embedded.seconds, 3),
                "score": round(score_seconds, 3),
                "total": round(time.perf_counter() - started, 3),
            },
            "versions": library_versions("scikit-learn"),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if chosen is not None:
            summary["best"]["note"] = (
                "the embed command embeds every row of the input; the probe scored a stratified sample"
            )
        write_csv(scores, stage.path(FILE_CSV))
        title = (
            f"{'/'.join(Path(config.model).parts[-2:])}: {rows['scored']} rows, {len(classes)} classes, {cv}-fold CV"
        )
        probe_plot(scores, stage.path(FILE_PLOT), title, best)
        stage.path(FILE_JSON).write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
        stage.seal({"format_version": FORMAT_VERSION, "summary": FILE_JSON, "created_at": summary["created_at"]})
    return ProbeResult(output_dir=output_dir, scores=scores, best=best, summary=summary)
