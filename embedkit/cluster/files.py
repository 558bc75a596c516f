"""The clustering directory's format: file names, manifest fields, and :func:`load_clustering` to read one back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .. import artefact
from ..errors import InputError

FILE_CLUSTERS = "clusters.parquet"
FILE_SUMMARY = "summary.json"
FILE_MAP = "map.png"
MANIFEST = "embedkit_clusters.json"
KIND = "embedkit-clustering"
FORMAT_VERSION = 1
META_KEY = b"embedkit.cluster"


@dataclass(frozen=True)
class Clustering:
    """A clustering directory read back and verified: its summary and the path of its table."""

    directory: Path
    summary: dict[str, Any]
    clusters_path: Path
    rows: int
    k: int

    def table(self) -> pa.Table:
        """``clusters.parquet`` (id, cluster, distance, keep columns)."""
        return pq.read_table(self.clusters_path)


def load_clustering(directory: str | Path) -> Clustering:
    """Open a directory written by :func:`cluster_file`, verifying every file against its manifest first.

    Raises:
        InputError: not a complete clustering directory; a file missing, symlinked, or not matching its sha256; a
            manifest field (naming it) or summary of the wrong shape; a table whose row count is not the manifest's.
    """
    directory = Path(directory)
    opened = artefact.open_dir(directory, manifest_name=MANIFEST, what="clustering")
    manifest = opened.manifest
    where = directory / MANIFEST

    def bad(name: str, problem: str) -> InputError:
        return InputError(f"{where}: field {name!r} {problem}; the clustering is corrupt or was edited by hand")

    if manifest.get("kind") != KIND or manifest.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{directory}: unsupported clustering format (kind {manifest.get('kind')!r}, version "
            f"{manifest.get('format_version')!r})"
        )
    for name, expected in (("summary", FILE_SUMMARY), ("clusters", FILE_CLUSTERS)):
        if manifest.get(name) != expected:
            raise bad(name, f"must be {expected!r}")
    for name in ("rows", "k"):
        value = manifest.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise bad(name, f"must be a count, got {value!r}")
    try:
        summary = json.loads(opened.path(FILE_SUMMARY).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"{directory / FILE_SUMMARY} is not readable JSON: {exc}") from exc
    if not isinstance(summary, dict):
        raise InputError(f"{directory / FILE_SUMMARY} is not a JSON object; the clustering is corrupt")
    clusters_path = opened.path(FILE_CLUSTERS)
    try:
        rows = pq.ParquetFile(clusters_path).metadata.num_rows
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{clusters_path}: corrupt or unreadable Parquet: {exc}") from exc
    if rows != manifest["rows"]:
        raise bad("rows", f"says {manifest['rows']} but {FILE_CLUSTERS} holds {rows}")
    return Clustering(directory, summary, clusters_path, rows, manifest["k"])
