"""The report directory's format: file names, the CSV, where ``--save-features`` may go, :func:`load_report`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import artefact
from ..errors import ConfigError, InputError
from .score import PairScore

FILE_CSV = "probe.csv"
FILE_JSON = "probe.json"
FILE_PLOT = "probe.png"
FILE_FEATURES = "features.parquet"  # scratch name of the collected features while the probe runs
MANIFEST = "embedkit_probe.json"
KIND = "embedkit-probe"
FORMAT_VERSION = 1


def write_csv(scores: list[PairScore], path: Path) -> None:
    import csv

    rows = [s.row() for s in scores]
    with artefact.atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def inside_report(path: Path, report: Path) -> bool:
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
