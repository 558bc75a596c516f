"""The probe stage: which layer and pooling give the best features for a labelled task, from one forward pass.

``probe_file`` embeds the labelled input ONCE with every requested (layer, pooling) pair as its own column (the
Extractor catches every requested hidden state of a batch in a single forward pass, so the pass costs about
what the deepest layer alone costs), into a normal embedkit features file. Each column is then scored by the
same cross-validated linear probe ``embedkit train --cv K --C 1 --standardize`` runs (standardised logistic
regression, stratified shuffled K-fold with the same seed), and optionally by the NMI of a k-means clustering.

The report directory holds::

    probe.csv           one row per (layer, pooling): accuracy and macro-F1, mean and std over the folds
    probe.png           score vs layer, one line per pooling
    probe.json          the table, per-fold scores, the best pair, the `embedkit embed` command that reproduces
                        its features, row counts and settings
    embedkit_probe.json the manifest (sha256 and size of every file), written last

The directory follows the artefact protocol (:mod:`embedkit.artefact`): written under a lock, built aside and
switched in whole; ``--save-features`` is written under its own lock beside its target and renamed into place.
:func:`load_report` reads a report back, verified.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import artefact
from .classify import DEFAULT_CLASSIFIER, ClassifierOptions, check_classes, cross_validate, load_training_data
from .config import ExtractConfig
from .errors import ConfigError, InputError, choice_error
from .extract.texts import check_text
from .sources import Source
from .store import INFO_COLUMNS, library_versions, open_features

log = logging.getLogger(__name__)

ALL_LAYERS = "all"
DEFAULT_POOLINGS = ("mean", "last", "weighted-mean")
DEFAULT_CV = 5
METRICS = ("macro-f1", "accuracy", "nmi")
DEFAULT_METRIC = "macro-f1"
# A fixed C, not train's cross-validated choice: the probe compares layers with one yardstick, and a search per
# fold per (layer, pooling) would multiply its cost by the grid.
PROBE_OPTIONS = ClassifierOptions(C=1.0, standardize=True)
FILE_CSV = "probe.csv"
FILE_JSON = "probe.json"
FILE_PLOT = "probe.png"
FILE_FEATURES = "features.parquet"  # scratch name of the collected features while the probe runs
MANIFEST = "embedkit_probe.json"
KIND = "embedkit-probe"
FORMAT_VERSION = 1
SAMPLE_TEXT = "__embedkit_text"  # column name of the text in the sampled input (never reaches the output)
MISSING_LABEL = "missing label"
READ_ROWS = 8192


# ---------------------------------------------------------------------------------------------- options


def parse_layers(values: str | int | Sequence[str | int]) -> str | tuple[int, ...]:
    """``"all"`` or layer indices from a string (``"0,3,6,-1"``), an int or a list of either."""
    if isinstance(values, (str, int)):
        values = [values]
    items = [
        v.strip() if isinstance(v, str) else v
        for value in values
        for v in (str(value).split(",") if isinstance(value, str) else [value])
    ]
    items = [v for v in items if v != ""]
    if not items:
        raise ConfigError("--layers needs 'all' or a list of layer indices such as 0,3,6,-1")
    if any(isinstance(v, str) and v.lower() == ALL_LAYERS for v in items):
        if len(items) > 1:
            raise ConfigError(f"--layers takes 'all' or a list of indices, not both: {', '.join(map(str, items))}")
        return ALL_LAYERS
    try:
        return tuple(int(v) for v in items)
    except ValueError:
        raise ConfigError(
            f"--layers: {', '.join(map(str, items))} is not 'all' or a list of integers such as 0,3,6,-1"
        ) from None


def model_layer_count(config: ExtractConfig) -> int:
    """Transformer blocks of ``config.model``, read from its config.json (cheap: no weights are loaded)."""
    from transformers import AutoConfig

    from .extract.model import _from_pretrained

    name = str(Path(config.model).expanduser())
    model_config = _from_pretrained(
        AutoConfig, name, revision=config.revision, trust_remote_code=config.trust_remote_code
    )
    return int(model_config.num_hidden_layers)


def probe_config(config: ExtractConfig, layers: str | Sequence[int]) -> ExtractConfig:
    """``config`` with ``layers`` filled in: ``"all"`` = 0 (embeddings) .. every block's output."""
    layers = parse_layers(layers)
    if layers == ALL_LAYERS:
        layers = tuple(range(model_layer_count(config) + 1))
    return config.replace(layers=layers)


# ---------------------------------------------------------------------------------------------- input


@dataclass
class LabelScan:
    """What one cheap pass over the input found: rows usable for probing, and why the others are not."""

    rows: int = 0
    usable: list[int] = field(default_factory=list)  # row numbers with an embeddable text and a label
    labels: list[Any] = field(default_factory=list)  # the label of each usable row
    skipped: Counter = field(default_factory=Counter)  # reason -> rows

    @property
    def class_counts(self) -> dict[Any, int]:
        counts = Counter(self.labels)
        return {label: counts[label] for label in sorted(counts, key=str)}


def _label_missing(value: Any) -> bool:
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or (isinstance(value, str) and not value.strip())
    )


def _label_key(value: Any) -> Any:
    # Unhashable JSON values (lists, objects) are counted by their JSON text, as the classify stage does.
    return value if isinstance(value, (str, int, float, bool)) else json.dumps(value, default=str)


def _as_list(values) -> list:
    return values.to_pylist() if isinstance(values, (pa.Array, pa.ChunkedArray)) else list(values)


def scan_labels(source: Source, label_column: str) -> LabelScan:
    """Count rows, labels and unusable rows (unparseable, no embeddable text, no label) without embedding."""
    scan = LabelScan()
    for records in source.batches(READ_ROWS):
        labels = _as_list(records.keep[label_column])
        for row, text, label, error in zip(records.row_numbers, records.texts, labels, records.parse_errors):
            scan.rows += 1
            reason = "malformed" if error is not None else None
            if reason is None:
                checked = check_text(text)
                reason = checked.status if checked.text is None else None
            if reason is None and _label_missing(label):
                reason = MISSING_LABEL
            if reason is not None:
                scan.skipped[reason] += 1
                continue
            scan.usable.append(row)
            scan.labels.append(_label_key(label))
    if scan.rows == 0:
        raise InputError(f"{source.spec} holds no data rows")
    if not scan.usable:
        raise InputError(
            f"{source.spec}: no row has both a text in {source.text_column!r} and a label in {label_column!r} "
            f"({_fmt_skipped(scan.skipped)})"
        )
    return scan


def stratified_sample(labels: Sequence[Any], size: int, seed: int, min_per_class: int = 1) -> np.ndarray:
    """Sorted positions of a seeded stratified sample of about ``size`` of ``labels``.

    Each class gets its proportional share (largest remainder), but never fewer than ``min_per_class`` rows
    (or all it has), so a rare class keeps enough rows for every fold of the cross-validation.
    """
    n = len(labels)
    if size >= n:
        return np.arange(n)
    groups: dict[Any, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    quota = {c: size * len(rows) / n for c, rows in groups.items()}
    take = {c: min(len(groups[c]), max(int(quota[c]), min_per_class)) for c in groups}
    left = size - sum(take.values())
    for c in sorted(groups, key=lambda c: quota[c] - int(quota[c]), reverse=True):
        if left <= 0:
            break
        if take[c] < len(groups[c]):
            take[c] += 1
            left -= 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.asarray(rows), take[c], replace=False) for c, rows in groups.items()]
    return np.sort(np.concatenate(chosen))


def _write_sample(source: Source, label_column: str, rows: set[int], path: Path) -> None:
    """The chosen rows (id, text, label) as a Parquet input for ``embed_file``; texts as ``check_text`` leaves them."""
    from .embed import _to_arrow

    ids, texts, labels = [], [], []
    for records in source.batches(READ_ROWS):
        record_ids = _as_list(records.ids) if records.ids is not None else records.row_numbers
        for row, rid, text, label in zip(
            records.row_numbers, record_ids, records.texts, _as_list(records.keep[label_column])
        ):
            if row in rows:
                ids.append(rid)
                texts.append(check_text(text).text)  # invalid UTF-8 repaired here: Parquet text must be valid
                labels.append(label)
    table = pa.table(
        {
            "id": _to_arrow(ids, "id"),
            SAMPLE_TEXT: pa.array(texts, type=pa.string()),
            label_column: _to_arrow(labels, label_column),
        }
    )
    pq.write_table(table, path)


# ---------------------------------------------------------------------------------------------- scoring


@dataclass
class PairScore:
    """The probe's scores for one (layer, pooling) column."""

    layer: int
    pooling: str
    column: str
    fold_accuracy: list[float]
    fold_macro_f1: list[float]
    accuracy: float  # over all out-of-fold predictions, as `embedkit train --cv` reports it
    macro_f1: float
    rows: int
    nmi: float | None = None

    @property
    def accuracy_mean(self) -> float:
        return float(np.mean(self.fold_accuracy))

    @property
    def accuracy_std(self) -> float:
        return float(np.std(self.fold_accuracy))

    @property
    def macro_f1_mean(self) -> float:
        return float(np.mean(self.fold_macro_f1))

    @property
    def macro_f1_std(self) -> float:
        return float(np.std(self.fold_macro_f1))

    def score(self, metric: str) -> float:
        value = {"accuracy": self.accuracy_mean, "macro-f1": self.macro_f1_mean, "nmi": self.nmi}[metric]
        if value is None:  # probe_file refuses metric "nmi" without nmi=True; only a direct caller gets here
            raise ConfigError(f"no {metric} score: it is computed only with nmi=True")
        return value

    def row(self) -> dict[str, Any]:
        """The CSV/JSON table row."""
        row = {
            "layer": self.layer,
            "pooling": self.pooling,
            "column": self.column,
            "accuracy_mean": round(self.accuracy_mean, 4),
            "accuracy_std": round(self.accuracy_std, 4),
            "macro_f1_mean": round(self.macro_f1_mean, 4),
            "macro_f1_std": round(self.macro_f1_std, 4),
            "accuracy_oof": round(self.accuracy, 4),
            "macro_f1_oof": round(self.macro_f1, 4),
            "rows": self.rows,
        }
        if self.nmi is not None:
            row["nmi"] = round(self.nmi, 4)
        return row


def score_vectors(
    X: np.ndarray,
    y: np.ndarray,
    *,
    cv: int = DEFAULT_CV,
    seed: int = 0,
    options: ClassifierOptions | None = None,
    nmi: bool = False,
) -> dict[str, Any]:
    """Cross-validated linear-probe scores of one matrix: the splits and classifier of ``embedkit train --cv``.

    Returns per-fold accuracy and macro-F1, the out-of-fold accuracy and macro-F1, and with ``nmi`` the NMI
    between the labels and a k-means clustering (k = number of classes) made by the cluster stage.
    """
    from sklearn.metrics import accuracy_score, f1_score

    classes = sorted(set(y.tolist()))
    predicted, fold = cross_validate(X, y, DEFAULT_CLASSIFIER, options or PROBE_OPTIONS, cv=cv, seed=seed)
    scores: dict[str, Any] = {"fold_accuracy": [], "fold_macro_f1": []}
    for k in range(cv):
        te = fold == k
        scores["fold_accuracy"].append(float(accuracy_score(y[te], predicted[te])))
        scores["fold_macro_f1"].append(
            float(f1_score(y[te], predicted[te], labels=classes, average="macro", zero_division=0))
        )
    scores["accuracy"] = float(accuracy_score(y, predicted))
    scores["macro_f1"] = float(f1_score(y, predicted, labels=classes, average="macro", zero_division=0))
    if nmi:
        from .cluster import ClusterOptions, cluster_metrics, cluster_vectors

        result = cluster_vectors(X, ClusterOptions(k=max(2, min(len(classes), len(X))), seed=seed, map="none"))
        scores["nmi"] = float(cluster_metrics(result, y.astype(object), seed=seed)["nmi"])
    return scores


def score_features(
    features: str | Path,
    label_column: str,
    *,
    cv: int = DEFAULT_CV,
    seed: int = 0,
    nmi: bool = False,
    options: ClassifierOptions | None = None,
    progress: bool = False,
) -> tuple[list[PairScore], dict[str, int]]:
    """Score every embedding column of a features file; also returns the rows skipped when loading.

    Raises:
        InputError: missing label column (the message lists the columns), a class too small for ``cv`` folds.
    """
    from tqdm.auto import tqdm

    feats = open_features(features)
    pairs = list(zip(feats.config.column_names(), feats.config.pairs))
    results: list[PairScore] = []
    skipped: dict[str, int] = {}
    with tqdm(total=len(pairs), unit="pair", file=sys.stderr, disable=not progress, desc="probe") as bar:
        for column, (layer, pooling) in pairs:
            bar.set_postfix_str(f"layer {layer} {pooling}", refresh=True)
            data = load_training_data(feats, label_column, column)
            if not results:
                check_classes(data.class_counts, label_column, cv=cv, test_size=0)
                skipped = {"null_embedding": data.skipped_null_embeddings, "missing_label": data.skipped_null_labels}
            s = score_vectors(data.X, data.y, cv=cv, seed=seed, options=options, nmi=nmi)
            results.append(
                PairScore(
                    layer=layer,
                    pooling=pooling,
                    column=column,
                    fold_accuracy=s["fold_accuracy"],
                    fold_macro_f1=s["fold_macro_f1"],
                    accuracy=s["accuracy"],
                    macro_f1=s["macro_f1"],
                    rows=len(data.y),
                    nmi=s.get("nmi"),
                )
            )
            bar.update(1)
    return results, skipped


def best_pair(scores: list[PairScore], metric: str = DEFAULT_METRIC) -> PairScore:
    """The highest-scoring pair; ties go to the shallower layer (cheaper: later blocks need not run)."""
    if metric not in METRICS:
        raise choice_error("probe metric", metric, METRICS)
    return max(scores, key=lambda s: (round(s.score(metric), 6), -s.layer))


# ---------------------------------------------------------------------------------------------- report


def embed_command(
    input: str | Path,
    config: ExtractConfig,
    layer: int,
    pooling: str,
    *,
    label_column: str,
    text_column: str = "text",
    id_column: str | None = None,
    fmt: str | None = None,
    output: str = "features.parquet",
) -> str:
    """The ``embedkit embed`` command line that writes the features of one (layer, pooling) pair.

    ``config`` is the extraction config as the user gave it (before the model resolved it), so only the
    settings they chose appear; the model's own defaults fill in the rest exactly as they did for the probe.
    """
    args = ["embedkit", "embed", str(input), "-o", output, "--model", config.model]
    if config.revision:
        args += ["--revision", config.revision]
    args += ["--text-column", text_column]
    if id_column:
        args += ["--id-column", id_column]
    if fmt:
        args += ["--format", fmt]
    args += ["--keep", label_column, "--layer", str(layer), "--pooling", pooling]
    if config.max_length is not None:
        args += ["--max-length", str(config.max_length)]
    if config.long_text != "truncate":
        args += ["--long-text", config.long_text]
    if config.stride is not None:
        args += ["--stride", str(config.stride)]
    if config.trust_remote_code:
        args.append("--trust-remote-code")
    return shlex.join(args)


def train_command(label_column: str, cv: int, seed: int, features: str = "features.parquet") -> str:
    """The ``embedkit train`` command whose cross-validation gives the probe's score on those features."""
    return shlex.join(
        [
            "embedkit",
            "train",
            features,
            "--label-column",
            label_column,
            "--cv",
            str(cv),
            "--seed",
            str(seed),
            "-o",
            "model",
        ]
    )


def format_table(scores: list[PairScore], best: PairScore | None = None) -> str:
    """The printed table: one row per pair, mean +/- std over the folds; the best pair starred."""
    with_nmi = any(s.nmi is not None for s in scores)
    width = max(8, *(len(s.pooling) for s in scores))
    header = f"  {'layer':>5}  {'pooling':<{width}}  {'accuracy':>15}  {'macro-F1':>15}" + (
        "  {:>6}".format("NMI") if with_nmi else ""
    )
    lines = [header]
    for s in scores:
        mark = "*" if s is best else " "
        line = (
            f"{mark} {s.layer:>5}  {s.pooling:<{width}}  {s.accuracy_mean:7.4f} ± {s.accuracy_std:.4f}  "
            f"{s.macro_f1_mean:7.4f} ± {s.macro_f1_std:.4f}"
        )
        if with_nmi:
            line += f"  {s.nmi:6.4f}" if s.nmi is not None else "  " + "-".rjust(6)
        lines.append(line)
    return "\n".join(lines)


def plot_scores(scores: list[PairScore], path: Path, title: str, best: PairScore | None = None) -> None:
    """Score vs layer, one line per pooling (band: +/- one std over the folds); one panel per metric."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels: list[tuple[str, str, str | None]] = [
        ("accuracy", "accuracy_mean", "accuracy_std"),
        ("macro-F1", "macro_f1_mean", "macro_f1_std"),
    ]
    if any(s.nmi is not None for s in scores):
        panels.append(("NMI (k-means)", "nmi", None))
    poolings = list(dict.fromkeys(s.pooling for s in scores))
    layers = sorted({s.layer for s in scores})
    fig = Figure(figsize=(4.2 * len(panels) + 0.6, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (name, mean_attr, std_attr) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for pooling in poolings:
            rows = sorted((s for s in scores if s.pooling == pooling), key=lambda s: s.layer)
            x = np.array([s.layer for s in rows])
            y = np.array([getattr(s, mean_attr) for s in rows], dtype=float)
            (line,) = ax.plot(x, y, marker="o", label=pooling)
            if std_attr:
                spread = np.array([getattr(s, std_attr) for s in rows])
                ax.fill_between(x, y - spread, y + spread, alpha=0.15, color=line.get_color())
        if best is not None and getattr(best, mean_attr) is not None:
            ax.plot(
                [best.layer],
                [getattr(best, mean_attr)],
                marker="*",
                markersize=16,
                color="black",
                linestyle="none",
                label=f"best: layer {best.layer}, {best.pooling}",
            )
        ax.set_xticks(layers)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize="small")
    fig.suptitle(title, fontsize="medium")
    with artefact.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _write_csv(scores: list[PairScore], path: Path) -> None:
    import csv

    rows = [s.row() for s in scores]
    with artefact.atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def _fmt_skipped(skipped: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()) if n) or "none"


def _inside(path: Path, report: Path) -> bool:
    """Whether the ``--save-features`` path is a file of the report directory itself (it then joins the report).

    Raises ConfigError where it cannot be either: the report directory itself, a subdirectory of it, a name the
    report uses, or a name that is not a plain file name.
    """
    # Normalised, not resolved: a symlink in the report is replaced with the report, so it counts as inside.
    path, report = Path(os.path.abspath(path)), Path(os.path.abspath(report))
    if path == report or report in path.parents and path.parent != report:
        raise ConfigError(
            f"--save-features {path} must be a file directly in the report directory {report} or outside it"
        )
    if path.parent != report:
        return False
    try:
        artefact.plain_name(path.name)
    except InputError:
        raise ConfigError(
            f"--save-features name {path.name!r} cannot be a file of the report: use a plain name "
            "such as features.parquet"
        ) from None
    if path.name in (FILE_CSV, FILE_JSON, FILE_PLOT, MANIFEST):
        raise ConfigError(f"--save-features {path.name} is the name of one of the report's own files")
    return True


@dataclass(frozen=True)
class ProbeReport:
    """A probe report directory read back and verified: probe.json and the path of each file the manifest lists."""

    directory: Path
    summary: dict[str, Any]
    files: dict[str, Path]


def load_report(directory: str | Path) -> ProbeReport:
    """Open a report written by :func:`probe_file`, verifying every file against its manifest first.

    Raises:
        InputError: not a complete report; a file missing, symlinked or not matching its sha256; a manifest field
            (naming it) or a probe.json of the wrong shape.
    """
    directory = Path(directory)
    opened = artefact.open_dir(directory, manifest_name=MANIFEST, what="probe report")
    manifest = opened.manifest
    if manifest.get("kind") != KIND or manifest.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{directory}: unsupported probe report format (kind {manifest.get('kind')!r}, version "
            f"{manifest.get('format_version')!r})"
        )
    if manifest.get("summary") != FILE_JSON or FILE_JSON not in manifest["files"]:
        raise InputError(
            f"{directory / MANIFEST}: field 'summary' must name {FILE_JSON}, a listed file; the report is "
            "corrupt or was edited by hand"
        )
    try:
        summary = json.loads(opened.path(FILE_JSON).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"{directory / FILE_JSON} is not readable JSON: {exc}") from exc
    if (
        not isinstance(summary, dict)
        or not isinstance(summary.get("table"), list)
        or not isinstance(summary.get("best"), dict)
    ):
        raise InputError(f"{directory / FILE_JSON} lacks the table or the best pair; the report is corrupt")
    return ProbeReport(directory, summary, {name: opened.path(name) for name in manifest["files"]})


# ---------------------------------------------------------------------------------------------- the stage


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
            lines.append(f"skipped {sum(rows['skipped'].values())} row(s): {_fmt_skipped(rows['skipped'])}")
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
    input: str | Path,
    label_column: str,
    output_dir: str | Path,
    config: ExtractConfig | None = None,
    *,
    layers: str | Sequence[int] = ALL_LAYERS,
    text_column: str = "text",
    id_column: str | None = None,
    fmt: str | None = None,
    cv: int = DEFAULT_CV,
    sample: int | None = None,
    seed: int = 0,
    nmi: bool = False,
    metric: str = DEFAULT_METRIC,
    save_features: str | Path | None = None,
    device: str = "auto",
    batch_tokens: int | None = None,
    threads: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    wait: bool = False,
) -> ProbeResult:
    """Score every (layer, pooling) pair of ``config`` on the labelled texts of ``input``; write a report.

    Args:
        input: raw labelled text (CSV, TSV, JSONL, Parquet; file, directory or glob).
        label_column: column holding the classes.
        output_dir: report directory (created; an existing report is replaced only with ``overwrite``).
        config: extraction settings (model, poolings, max_length, ...); its ``layers`` are replaced by ``layers``.
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
    from .embed import embed_file

    started = time.perf_counter()
    config = config or ExtractConfig(pooling=DEFAULT_POOLINGS)
    if cv < 2:
        raise ConfigError(f"--cv needs at least 2 folds, got {cv}")
    if sample is not None and sample < 2:
        raise ConfigError(f"--sample needs at least 2 rows, got {sample}")
    if metric not in METRICS:
        raise choice_error("probe metric", metric, METRICS)
    if metric == "nmi" and not nmi:
        raise ConfigError("--metric nmi needs --nmi")
    if label_column == text_column:
        raise ConfigError(f"the label column and the text column are both {label_column!r}")
    if label_column == id_column:
        raise ConfigError(f"the label column and the id column are both {label_column!r}")
    if label_column in ("id", *INFO_COLUMNS) or label_column.startswith("embedding"):
        raise ConfigError(f"label column {label_column!r} has the name of a column embedkit writes itself; rename it")
    layers = parse_layers(layers)
    output_dir = Path(output_dir)
    in_report = save_features is not None and _inside(Path(save_features), output_dir)
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
        source = Source(input, text_column=text_column, id_column=id_column, keep=(label_column,), fmt=fmt)
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
            run: dict[str, Any] = dict(id_column=id_column, keep=(label_column,), fmt=fmt, text_column=text_column)
            if chosen is not None:
                sample_input = scratch / "sample.parquet"
                _write_sample(source, label_column, {scan.usable[i] for i in chosen}, sample_input)
                run = dict(id_column="id", keep=(label_column,), fmt="parquet", text_column=SAMPLE_TEXT)
                embedded = embed_file(
                    sample_input,
                    features,
                    full_config,
                    device=device,
                    batch_tokens=batch_tokens,
                    threads=threads,
                    progress=progress,
                    **run,
                )
            else:
                embedded = embed_file(
                    input,
                    features,
                    full_config,
                    device=device,
                    batch_tokens=batch_tokens,
                    threads=threads,
                    progress=progress,
                    **run,
                )
            t0 = time.perf_counter()
            scores, _ = score_features(features, label_column, cv=cv, seed=seed, nmi=nmi, progress=progress)
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
            input,
            config,
            best.layer,
            best.pooling,
            label_column=label_column,
            text_column=text_column,
            id_column=id_column,
            fmt=fmt,
        )
        summary: dict[str, Any] = {
            "kind": "embedkit-probe",
            "input": str(input),
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
        _write_csv(scores, stage.path(FILE_CSV))
        title = (
            f"{'/'.join(Path(config.model).parts[-2:])}: {rows['scored']} rows, {len(classes)} classes, {cv}-fold CV"
        )
        plot_scores(scores, stage.path(FILE_PLOT), title, best)
        stage.path(FILE_JSON).write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
        stage.seal({"format_version": FORMAT_VERSION, "summary": FILE_JSON, "created_at": summary["created_at"]})
    return ProbeResult(output_dir=output_dir, scores=scores, best=best, summary=summary)


__all__ = [
    "ALL_LAYERS",
    "DEFAULT_CV",
    "DEFAULT_METRIC",
    "DEFAULT_POOLINGS",
    "METRICS",
    "PairScore",
    "ProbeResult",
    "ProbeReport",
    "best_pair",
    "embed_command",
    "format_table",
    "load_report",
    "parse_layers",
    "probe_file",
    "score_features",
    "score_vectors",
    "stratified_sample",
]
