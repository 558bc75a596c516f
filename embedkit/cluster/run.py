"""The cluster stage: a features file in, a clustering directory out (:func:`cluster_file`)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import artefact
from ..store import library_versions, open_features
from .describe import describe_clusters
from .files import FILE_CLUSTERS, FILE_MAP, FILE_SUMMARY, FORMAT_VERSION, KIND, MANIFEST, META_KEY
from .fit import cluster_prepared
from .metrics import cluster_metrics
from .options import NOISE, ClusterOptions
from .preprocessing import stream_preprocess
from .projection import draw_map

log = logging.getLogger(__name__)


def cluster_file(
    features: str | Path,
    output_dir: str | Path,
    options: ClusterOptions | None = None,
    *,
    column: str | None = None,
    label_column: str | None = None,
    text_column: str | None = None,
    keep: tuple[str, ...] | list[str] = (),
    overwrite: bool = False,
    progress: bool = False,
    wait: bool = False,
) -> ClusterRun:
    """Cluster the vectors of a features file and write ``clusters.parquet``, ``map.png`` and ``summary.json``.

    Args:
        features: a Parquet written by ``embedkit embed``.
        output_dir: directory to create (its parent must exist), an empty one, or one holding a clustering.
        options: how to cluster (defaults: k-means, k auto, standardize + L2 + PCA 64).
        column: embedding column (needed when the file has several).
        label_column: true labels for NMI/ARI.
        text_column: texts for central examples and terms; default ``text`` when the file has it.
        keep: columns copied into ``clusters.parquet``.
        overwrite: replace a finished clustering in ``output_dir`` (kept whole until the new one is complete).
        progress: show progress bars on stderr.
        wait: if another process is writing ``output_dir``, wait for it instead of raising BusyError.

    Returns:
        The finished run: ``summary_lines()`` for people, ``summary`` (also written to ``summary.json``) for code.

    Raises:
        InputError: missing file or column, no usable rows, k larger than the rows.
        OutputError: the directory cannot be written, holds a clustering (without ``overwrite``) or other files.
        BusyError: another process is writing ``output_dir`` (without ``wait``).
    """
    options = options or ClusterOptions()
    started = time.perf_counter()
    source = open_features(features)
    column = source.embedding_column(column)
    if text_column is None:
        text_column = source.text_column
    keep = list(dict.fromkeys(keep))
    extra = [c for c in dict.fromkeys([*keep, *(c for c in (label_column, text_column) if c)]) if c != "id"]
    source.require_columns(extra)
    output_dir = Path(output_dir)
    # The lock is held from before the vectors are read until the switch: a second writer fails (or waits) at once.
    with artefact.writing_dir(
        output_dir,
        kind=KIND,
        manifest_name=MANIFEST,
        overwrite=overwrite,
        wait=wait,
        former_names=(FILE_CLUSTERS, FILE_MAP, FILE_SUMMARY),
    ) as stage:
        summary = _cluster_into(
            stage, source, column, options, label_column, text_column, keep, extra, progress, started
        )
    return ClusterRun(output_dir, summary)


def _cluster_into(
    stage: artefact.Staging,
    source,
    column: str,
    options: ClusterOptions,
    label_column: str | None,
    text_column: str | None,
    keep: list[str],
    extra: list[str],
    progress: bool,
    started: float,
) -> dict[str, Any]:
    """The work of :func:`cluster_file`: every output file written into ``stage``, then sealed. Returns the summary."""
    t0 = time.perf_counter()
    vectors, table, skipped_null, skipped_nonfinite, info = stream_preprocess(source, column, extra, options)
    if skipped_null or skipped_nonfinite:
        log.warning("skipped %d rows with a null embedding and %d with NaN/inf values", skipped_null, skipped_nonfinite)
    result = cluster_prepared(vectors, info, options, progress, {"preprocess_s": time.perf_counter() - t0})

    ids = table.column("id").to_pylist()
    texts = table.column(text_column).to_pylist() if text_column else None
    truth = np.array(table.column(label_column).to_pylist(), dtype=object) if label_column else None
    t0 = time.perf_counter()
    metrics = cluster_metrics(result, truth, options.seed)
    clusters = describe_clusters(result, texts, ids)
    result.timings["summarise_s"] = time.perf_counter() - t0

    out_table = pa.table(
        {
            "id": table.column("id"),
            "cluster": pa.array(result.labels, type=pa.int32()),
            "distance": pa.array(result.distances, type=pa.float32(), from_pandas=True),  # NaN (noise) -> null
            **{c: table.column(c) for c in keep if c != "id"},
        }
    )
    settings = {"source": str(source.path), "column": column, "options": _options_dict(options)}
    out_table = out_table.replace_schema_metadata({META_KEY: json.dumps(settings).encode()})
    pq.write_table(out_table, stage.path(FILE_CLUSTERS))

    files: dict[str, Any] = {"clusters": FILE_CLUSTERS}
    if options.map != "none":
        t0 = time.perf_counter()
        title = f"{options.method}, {result.n_clusters} clusters, {options.map.upper()} map"
        map_rows = draw_map(result, stage.path(FILE_MAP), options.map, options.seed, title)
        result.timings["map_s"] = time.perf_counter() - t0
        files["map"] = FILE_MAP
        files["map_rows"] = map_rows

    result.timings["total_s"] = time.perf_counter() - started
    notes = _notes(source, options, metrics, len(result.labels), text_column)
    for note in notes:
        log.info(note)
    summary = {
        "source": str(source.path),
        "column": column,
        "model": source.meta.get("model", {}).get("name"),
        "rows": source.num_rows,
        "clustered_rows": len(result.labels),
        "skipped_rows": {"null_embedding": skipped_null, "non_finite": skipped_nonfinite},
        "method": options.method,
        "k": result.k,
        "options": _options_dict(options),
        "preprocessing": result.preprocessing,
        "k_selection": result.k_selection,
        "label_column": label_column,
        "text_column": text_column,
        "metrics": metrics,
        "clusters": clusters,
        "files": files,
        "notes": notes,
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions("scikit-learn", "numpy", "pyarrow"),
    }
    stage.path(FILE_SUMMARY).write_text(
        json.dumps(summary, indent=2, ensure_ascii=False, default=_json_default), encoding="utf-8"
    )
    # The manifest repeats what a reader checks the files against: the row count of clusters.parquet and k.
    stage.seal(
        {
            "format_version": FORMAT_VERSION,
            "summary": FILE_SUMMARY,
            "clusters": FILE_CLUSTERS,
            "rows": len(result.labels),
            "k": result.n_clusters,
            "created_at": summary["created_at"],
        }
    )
    return summary


def _notes(source, options: ClusterOptions, metrics: dict[str, Any], rows: int, text_column: str | None) -> list[str]:
    """Outcomes a user would otherwise misread: mostly-noise HDBSCAN, summaries without texts."""
    notes = []
    noise = metrics.get("noise_rows", 0)
    if options.method == "hdbscan" and noise * 2 >= rows:
        notes.append(
            f"hdbscan marked {noise:,} of {rows:,} rows as noise ({metrics['clusters']} clusters): density is thin in "
            f"embedding space; lower --min-cluster-size (now {options.min_cluster_size}) or use --method kmeans"
        )
    if text_column is None and source.text_columns:
        notes.append(
            "no 'text' column: clusters are described by ids only; pass --text-column COLUMN for central "
            f"texts and distinctive terms (text columns here: {', '.join(source.text_columns)})"
        )
    return notes


def _options_dict(options: ClusterOptions) -> dict[str, Any]:
    d = asdict(options)
    d["k_range"] = list(d["k_range"])
    return d


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


@dataclass(frozen=True)
class ClusterRun:
    """A finished clustering: where it went and its summary, the same dict ``summary.json`` holds."""

    output_dir: Path
    summary: dict[str, Any]

    def summary_lines(self, max_clusters: int = 50) -> list[str]:
        """The summary as a plain-text table for the terminal: counts, scores, then one row per cluster."""
        summary = self.summary
        m = summary["metrics"]
        title = f"{summary['clustered_rows']:,} rows clustered by {summary['method']} into {m['clusters']} clusters"
        if summary.get("k_selection"):
            lo, hi = summary["k_selection"]["range"]
            title += f" (k chosen by silhouette over {lo}..{hi})"
        lines = [title]
        skipped = summary["skipped_rows"]
        if skipped["null_embedding"] or skipped["non_finite"]:
            lines.append(
                f"skipped {skipped['null_embedding']} rows with a null embedding, {skipped['non_finite']} with NaN/inf"
            )
        scores = [f"silhouette {m['silhouette']:.3f}" if m.get("silhouette") is not None else "silhouette n/a"]
        scores += [f"{name.upper()} {m[name]:.3f}" for name in ("nmi", "ari") if name in m]
        if m.get("noise_rows"):
            scores.append(f"noise {m['noise_rows']:,} rows")
        lines.append(", ".join(scores))
        has_text = summary.get("text_column") is not None
        lines.append(
            f"{'cluster':>7}  {'size':>8}  {'share':>6}  "
            + ("terms / most central text" if has_text else "most central ids")
        )
        for c in summary["clusters"][:max_clusters]:
            name = "noise" if c["cluster"] == NOISE else str(c["cluster"])
            head = f"{name:>7}  {c['size']:>8,}  {c['share'] * 100:5.1f}%  "
            if has_text and c["cluster"] != NOISE:
                lines.append(head + ", ".join(c.get("terms") or []))
                central = c.get("central_texts") or []
                if central:
                    lines.append(" " * 28 + "« " + central[0][:100] + " »")
            else:
                lines.append(head + ", ".join(map(str, c["central_ids"][:5])))
        if len(summary["clusters"]) > max_clusters:
            lines.append(f"... {len(summary['clusters']) - max_clusters} more clusters in summary.json")
        lines += [f"note: {note}" for note in summary.get("notes", [])]
        return lines
