"""Declarative pipelines: one TOML file names the source, the extraction settings and the stages to run.

A pipeline always embeds first, then runs the stages its file names, in a fixed order:
``train`` -> ``predict`` -> ``cluster`` -> ``index`` -> ``search`` -> ``probe``. Each stage table's keys are the
keyword arguments of the library function behind it (and the fields of its options object), so the file and
the Python API cannot drift apart. Every table is validated against a pydantic model before anything runs: the
stage and [extract] models are derived from those signatures and dataclasses (their annotations are the
types), [pipeline] and [source] are declared here. Types are strict (``cv = "5"`` is not 5), unknown and missing
keys are errors, and each error names the file, the table, the key and what was expected.

A second run skips every stage whose inputs and settings are unchanged. Fingerprints are content hashes of the
source files and of the settings, chained from stage to stage (a stage's fingerprint includes its upstream
stage's), so re-embedding reruns everything downstream and editing one stage's options reruns only it and what
depends on it. ``force`` reruns everything. Paths in the file are relative to the file itself.

The package, one module per job: ``schema`` (the typed tables and their validation), ``load`` (a file parsed
into a :class:`Pipeline`), ``stages`` (what each stage calls, in which order, with which keys), ``state`` (the
fingerprints and the record of finished stages) and ``run`` (:func:`run_pipeline`). Every public name is
re-exported here.
"""

from __future__ import annotations

from .load import Pipeline, load_pipeline
from .run import StageOutcome, run_pipeline
from .schema import PipelineTable, SourceTable, stage_model
from .stages import NEEDS, RUNTIME_KEYS, STAGES, allowed_keys, cache_dir, input_spec, split_options, stage_outputs
from .state import STATE_FILE

__all__ = [
    "NEEDS",
    "RUNTIME_KEYS",
    "STAGES",
    "STATE_FILE",
    "Pipeline",
    "PipelineTable",
    "SourceTable",
    "StageOutcome",
    "allowed_keys",
    "cache_dir",
    "input_spec",
    "load_pipeline",
    "run_pipeline",
    "split_options",
    "stage_model",
    "stage_outputs",
]
