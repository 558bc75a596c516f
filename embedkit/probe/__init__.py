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

One module per job: ``layers`` (which layers), ``labels`` (usable rows, stratified sample), ``score`` (the
cross-validated probe), ``commands`` (the reproduce commands), ``report`` (table and plot), ``files`` (the report
directory's format) and ``run`` (:func:`probe_file`, the stage).
"""

from __future__ import annotations

from .commands import embed_command, train_command
from .files import FILE_CSV, FILE_JSON, FILE_PLOT, MANIFEST, ProbeReport, load_report
from .labels import stratified_sample
from .layers import ALL_LAYERS, parse_layers, probe_config
from .report import format_table
from .run import DEFAULT_POOLINGS, ProbeResult, probe_file
from .score import (
    DEFAULT_CV,
    DEFAULT_METRIC,
    METRICS,
    PROBE_OPTIONS,
    PairScore,
    best_pair,
    score_features,
    score_vectors,
)

__all__ = [
    "ALL_LAYERS",
    "DEFAULT_CV",
    "DEFAULT_METRIC",
    "DEFAULT_POOLINGS",
    "FILE_CSV",
    "FILE_JSON",
    "FILE_PLOT",
    "MANIFEST",
    "METRICS",
    "PROBE_OPTIONS",
    "PairScore",
    "ProbeResult",
    "ProbeReport",
    "best_pair",
    "embed_command",
    "format_table",
    "load_report",
    "parse_layers",
    "probe_config",
    "probe_file",
    "score_features",
    "score_vectors",
    "stratified_sample",
    "train_command",
]
