"""The audit stage: association tests on every requested layer x pooling from ONE forward pass, and group separation
in a features file. Each writes an artefact directory through :func:`embedkit.artefact.writing_dir`.

``audit_model`` builds every sentence of every test (word x template) once, deduplicated, and runs them through
one :class:`~embedkit.extract.Extractor` configured with all requested layers and poolings: the Extractor catches
every hidden state of a batch in a single pass (as the probe stage does), so auditing 13 layers costs about what
the last layer alone costs. A word's vector is the mean of its template sentences' vectors.

The directory holds::

    audit.parquet, audit.csv   one row per (test, layer, pooling): effect_size, p_value, ci_low, ci_high, n_x, ...
    audit.png                  heatmap of d, tests x layers, one panel per pooling
    audit.html                 self-contained report: every result in plain words, and the method's limits
    audit.json                 manifest (written last): settings, the tests' words and templates, timings, digests

``audit_features`` writes groups.csv (per embedding column: probe accuracy, majority share, spread, p),
group_pairs.csv (centroid cosine distances), groups.png (probe accuracy per layer), audit.html and audit.json.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .. import artefact
from ..config import ExtractConfig
from ..errors import ConfigError, InputError
from ..spec import Runtime
from .builtin_tests import BUILTIN_TESTS
from .groups import DEFAULT_GROUP_PERMUTATIONS, group_separation
from .result import (
    COLUMNS,
    FILE_CSV,
    FILE_GROUPS,
    FILE_GROUPS_PLOT,
    FILE_HTML,
    FILE_PAIRS,
    FILE_PLOT,
    FILE_TABLE,
    KIND,
    MANIFEST,
    AuditResult,
    _write_table,
)
from .testsets import AssociationTest, load_tests
from .weat import DEFAULT_BOOTSTRAP, DEFAULT_PERMUTATIONS, EXACT_LIMIT, weat

log = logging.getLogger(__name__)

DEFAULT_POOLING = ("mean",)
# Target sets whose words differ by this many tokens on average differ in surface form as well as in meaning; the
# report says so. A GPT-2-shaped model with random weights showed d ~ 1 on the built-in names test at every layer
# (benchmarks/RESULTS.md): tokenisation alone can produce an association.
TOKEN_GAP_WARNING = 0.5


def sentence_plan(tests: Sequence[AssociationTest]) -> tuple[list[str], dict[tuple[str, str], list[int]]]:
    """Every distinct sentence once, and for each (test, word) the rows of its template sentences."""
    index: dict[str, int] = {}
    rows: dict[tuple[str, str], list[int]] = {}
    for test in tests:
        for word in (*test.x, *test.y, *test.a, *test.b):
            rows[(test.name, word)] = [index.setdefault(s, len(index)) for s in test.sentences(word)]
    return list(index), rows


def _mean_tokens(
    n_tokens: np.ndarray, plan: dict[tuple[str, str], list[int]], test: str, words: Sequence[str]
) -> float:
    """Tokens per word (special tokens and the template included), averaged over templates and words."""
    return float(np.mean([n_tokens[plan[(test, w)]].mean() for w in words]))


def _word_vectors(
    vectors: np.ndarray, plan: dict[tuple[str, str], list[int]], test: str, words: Sequence[str]
) -> np.ndarray:
    # The word is the unit of the test: its template sentences are averaged, because counting each sentence as
    # its own sample would treat five frames of one word as five independent observations and shrink the p-value.
    return np.stack([vectors[plan[(test, w)]].mean(axis=0) for w in words])


def audit_model(
    output_dir: str | Path,
    config: ExtractConfig | None = None,
    *,
    layers: str | Sequence[int] = "all",
    tests: str | Path | Sequence[AssociationTest] | None = None,
    permutations: int = DEFAULT_PERMUTATIONS,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    exact_limit: int = EXACT_LIMIT,
    seed: int = 0,
    runtime: Runtime | None = None,
    progress: bool | None = None,
    overwrite: bool = False,
    wait: bool = False,
    title: str | None = None,
    control: bool = False,
) -> AuditResult:
    """Run association tests on every (layer, pooling) of ``config``'s model; write the report directory.

    Args:
        output_dir: the report directory (an existing report is replaced only with ``overwrite``).
        config: model and poolings (default pooling: mean); its ``layers`` are replaced by ``layers``.
        layers: ``"all"`` (0 = embeddings .. last block) or indices such as ``(0, 6, -1)``.
        tests: a TOML file of tests, a list of :class:`AssociationTest`, or None for the built-in sets.
        permutations: random re-splits per test and pair when the exact test would need more than ``exact_limit``.
        bootstrap: resamples for the 95% interval of d.
        seed: seeds every permutation and bootstrap stream (one per test and pair, so results do not depend on
            which other tests ran).
        runtime: device, batch size, threads and progress bar [default: ``Runtime()``]; ``progress``, where
            set, is put over it.
        title: the heatmap's title [default: the model's name and "WEAT effect size per layer"].
        control: also run every test on a random-weights copy of the model (same architecture and tokenizer; a
            second forward pass) and report its d and p next to each result (``control_effect_size``,
            ``control_p_value``): what surface form alone produces.

    Raises:
        ConfigError: a bad test file (naming file, test and key), bad layers, poolings or counts.
        ModelLoadError: the model cannot be loaded. OutputError / BusyError: the directory cannot be written.
    """
    from tqdm.auto import tqdm

    from ..plots import heatmap_png
    from ..probe import probe_config
    from ..store import library_versions
    from .report import weat_html

    started = time.perf_counter()
    runtime = Runtime.of(runtime, progress=progress)
    if permutations < 1 or bootstrap < 0:
        raise ConfigError(f"permutations must be >= 1 and bootstrap >= 0, got {permutations} and {bootstrap}")
    if tests is None:
        tests, source = list(BUILTIN_TESTS), "built-in"
    elif isinstance(tests, (str, Path)):
        tests, source = load_tests(tests), str(tests)
    else:
        tests, source = list(tests), "api"
    if not tests:
        raise ConfigError("no association test to run")
    if len({t.name for t in tests}) != len(tests):
        raise ConfigError("two association tests share a name")
    config = config or ExtractConfig(pooling=DEFAULT_POOLING)
    sentences, plan = sentence_plan(tests)
    output_dir = Path(output_dir)
    with artefact.writing_dir(output_dir, kind=KIND, manifest_name=MANIFEST, overwrite=overwrite, wait=wait) as stage:
        t0 = time.perf_counter()
        extractor = runtime.extractor(probe_config(config, layers))
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        with tqdm(
            total=len(sentences), unit="text", file=sys.stderr, disable=not runtime.progress, desc="audit"
        ) as bar:
            encoded = extractor.encode(sentences, progress=lambda done, _tokens: bar.update(done))
        bad = np.flatnonzero(~encoded.valid)
        if bad.size:
            raise InputError(f"sentence {sentences[bad[0]]!r} cannot be embedded: {encoded.error[bad[0]]}")
        t_embed = time.perf_counter() - t0
        control_vectors = None
        if control:
            from .control import random_twin

            t0 = time.perf_counter()
            with tqdm(
                total=len(sentences),
                unit="text",
                file=sys.stderr,
                disable=not runtime.progress,
                desc="random-weights control",
            ) as bar:
                control_vectors = (
                    random_twin(extractor, seed)
                    .encode(sentences, progress=lambda done, _tokens: bar.update(done))
                    .vectors
                )
            t_control = time.perf_counter() - t0

        t0 = time.perf_counter()
        rows = []
        tokens = {
            t.name: (
                round(_mean_tokens(encoded.n_tokens, plan, t.name, t.x), 3),
                round(_mean_tokens(encoded.n_tokens, plan, t.name, t.y), 3),
            )
            for t in tests
        }
        for c, ((layer, pooling), column) in enumerate(zip(extractor.config.pairs, extractor.columns)):
            vectors = encoded.vectors[column]
            for t, test in enumerate(tests):
                sets = [_word_vectors(vectors, plan, test.name, words) for words in (test.x, test.y, test.a, test.b)]
                result = weat(
                    *sets, permutations=permutations, bootstrap=bootstrap, exact_limit=exact_limit, seed=[seed, t, c]
                )
                r = result.to_dict()
                row = {
                    "test": test.name,
                    "category": test.category,
                    "layer": int(layer),
                    "pooling": pooling,
                    **{k: r[k] for k in COLUMNS if k in r},
                    "tokens_x": tokens[test.name][0],
                    "tokens_y": tokens[test.name][1],
                }
                if control_vectors is not None:
                    words = (test.x, test.y, test.a, test.b)
                    sets = [_word_vectors(control_vectors[column], plan, test.name, w) for w in words]
                    # Same seed stream as the audited model: the two p-values differ only through the vectors.
                    twin = weat(
                        *sets, permutations=permutations, bootstrap=0, exact_limit=exact_limit, seed=[seed, t, c]
                    )
                    row.update(
                        control_effect_size=twin.effect_size,
                        control_p_value=twin.p_value,
                        control_p_reverse=twin.p_reverse,
                    )
                rows.append(row)
        t_stats = time.perf_counter() - t0

        resolved = extractor.config
        meta: dict[str, Any] = {
            "mode": "weat",
            "model": config.model,
            "extract_config": resolved.to_dict(),
            "layers": list(resolved.layers),
            "pooling": list(resolved.pooling),
            "tests_source": source,
            "tests": [t.to_dict() for t in tests],
            "sentences": len(sentences),
            "permutations": permutations,
            "bootstrap": bootstrap,
            "exact_limit": exact_limit,
            "seed": seed,
            "token_gap_warning": TOKEN_GAP_WARNING,
            "control": f"random weights, same architecture and tokenizer, seed {seed}" if control else None,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": library_versions("numpy"),
        }
        panels = rows + (
            [
                {
                    **r,
                    "pooling": f"{r['pooling']}, random weights",
                    "effect_size": r["control_effect_size"],
                    "p_value": r["control_p_value"],
                    "p_reverse": r["control_p_reverse"],
                }
                for r in rows
            ]
            if control
            else []
        )
        png = heatmap_png(panels, title or f"{'/'.join(Path(config.model).parts[-2:])}: WEAT effect size per layer")
        stage.path(FILE_PLOT).write_bytes(png)
        _write_table(rows, stage.path(FILE_TABLE), stage.path(FILE_CSV))
        stage.path(FILE_HTML).write_text(weat_html(meta, rows, tests, png), encoding="utf-8")
        meta["seconds"] = {
            "load": round(t_load, 3),
            "embed": round(t_embed, 3),
            "statistics": round(t_stats, 3),
            "total": round(time.perf_counter() - started, 3),
        }
        if control:
            meta["seconds"]["control"] = round(t_control, 3)
        manifest = stage.seal(meta)
    return AuditResult(output_dir=output_dir, rows=rows, manifest=manifest, tests=tests)


def audit_features(
    features: str | Path,
    group_column: str,
    output_dir: str | Path,
    *,
    columns: Sequence[str] | None = None,
    permutations: int = DEFAULT_GROUP_PERMUTATIONS,
    cv: int = 5,
    seed: int = 0,
    overwrite: bool = False,
    wait: bool = False,
) -> AuditResult:
    """How far apart the groups of ``group_column`` lie in each embedding column of a features file.

    Every embedding column is audited (layer by layer for a file written with several layers) unless ``columns``
    names some. Rows with no group or no vector are left out and counted.

    Raises:
        InputError: the file, the group column or a named column is missing; fewer than 2 groups; a group smaller
            than ``cv``. OutputError / BusyError: the directory cannot be written.
    """
    import pyarrow.compute as pc

    from ..plots import separation_png
    from ..store import open_features
    from .report import groups_html

    feats = open_features(features)
    feats.require_columns([group_column])
    if group_column.startswith("embedding") or group_column in ("id", "status", "error", "n_tokens"):
        raise ConfigError(
            f"group column {group_column!r} is a column embedkit writes itself; name a column of your data"
        )
    chosen = [feats.embedding_column(c) for c in columns] if columns else feats.embedding_columns
    if not chosen:
        feats.embedding_column()  # raises the file's own "no embedding column" message
    output_dir = Path(output_dir)
    with artefact.writing_dir(output_dir, kind=KIND, manifest_name=MANIFEST, overwrite=overwrite, wait=wait) as stage:
        rows, pairs, first = [], [], None
        for column in chosen:
            X, table, null_vectors = feats.load(column, extra=[group_column])
            has_group = pc.is_valid(table.column(group_column)).to_numpy(zero_copy_only=False)
            groups = table.column(group_column).to_pylist()
            X, groups = X[has_group], [g for g, keep in zip(groups, has_group) if keep]
            sep = group_separation(X, groups, permutations=permutations, cv=cv, seed=seed)
            layer_config = feats.column_config(column)
            first = first or (sep, null_vectors + int((~has_group).sum()))
            rows.append(
                {
                    "column": column,
                    "layer": layer_config.layers[0],
                    "pooling": layer_config.pooling[0],
                    "rows": int(sum(sep.sizes)),
                    "probe_accuracy": sep.probe_accuracy,
                    "probe_macro_f1": sep.probe_macro_f1,
                    "majority_share": sep.majority_share,
                    "spread": sep.spread,
                    "p_value": sep.p_value,
                    "permutations": sep.permutations,
                }
            )
            pairs += [{"column": column, **p} for p in sep.centroid_distances]
        assert first is not None  # ``chosen`` is never empty (checked above)
        sep, skipped = first
        meta: dict[str, Any] = {
            "mode": "groups",
            "features": str(features),
            "group_column": group_column,
            "model": feats.config.model,
            "groups": sep.groups,
            "sizes": sep.sizes,
            "skipped_rows": skipped,
            "columns": chosen,
            "cv": cv,
            "permutations": permutations,
            "seed": seed,
            "table": rows,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        _write_table(rows, None, stage.path(FILE_GROUPS))
        _write_table(pairs, None, stage.path(FILE_PAIRS))
        png = separation_png(rows, f"{Path(features).name}: groups of {group_column!r}")
        stage.path(FILE_GROUPS_PLOT).write_bytes(png)
        stage.path(FILE_HTML).write_text(groups_html(meta, rows, pairs, png), encoding="utf-8")
        manifest = stage.seal(meta)
    return AuditResult(output_dir=output_dir, rows=rows, manifest=manifest)


__all__ = [
    "COLUMNS",
    "FILE_CSV",
    "FILE_HTML",
    "FILE_PLOT",
    "FILE_TABLE",
    "KIND",
    "MANIFEST",
    "AuditResult",
    "audit_features",
    "audit_model",
    "sentence_plan",
]
