"""What each stage of a pipeline calls: the library function, the keys its table may hold, where it writes."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cache import CACHE_DIR, cached_features
from ..errors import ConfigError
from ..spec import InputSpec, Runtime

if TYPE_CHECKING:
    from .load import Pipeline

STAGES = ("embed", "train", "predict", "cluster", "index", "search", "probe")
RUNTIME_KEYS = ("device", "batch_tokens", "threads")  # [extract] keys that go to embed_file, not ExtractConfig
NEEDS = {"predict": "train", "search": "index"}  # stage: the stage whose output it reads


def _features(p: Pipeline) -> Path:
    return p.output_dir / "features.parquet"


def _label(p: Pipeline, options: dict[str, Any]) -> str:
    label = options.pop("label_column", None) or p.source.get("label_column")
    if not label:
        raise ConfigError("needs label_column (in this table or in [source])")
    return label


def input_spec(p: Pipeline) -> InputSpec:
    """The [source] table as the embed stage's input."""
    s = p.source
    return InputSpec(
        p.relative(s["path"]),
        s.get("format"),
        s.get("text_column", "text"),
        s.get("id_column"),
        tuple(s.get("keep", ())),
        s.get("keep_text", True),
    )


def cache_dir(p: Pipeline) -> Path:
    """The features cache shared by every pipeline writing under the same root (embedkit-out/ by default)."""
    return p.output_dir.parent / CACHE_DIR


def _call_embed(p: Pipeline, key: str, progress: bool, force: bool) -> list[str]:
    runtime = Runtime(progress=progress, **p.runtime)
    features = cached_features(key, cache_dir(p), _features(p), input_spec(p), p.config, runtime, refresh=force)
    return features.summary_lines()


def _call_train(p: Pipeline, options: dict[str, Any], progress: bool) -> list[str]:
    from ..classify import train

    label = _label(p, options)
    kwargs, opts = split_options("train", options)
    return train(_features(p), label, p.output_dir / "model", options=opts, overwrite=True, **kwargs).summary_lines()


def _call_predict(p: Pipeline, options: dict[str, Any], progress: bool) -> list[str]:
    from ..classify import predict_file

    options.setdefault("text_column", p.source.get("text_column", "text"))
    input_path = p.relative(_require(options, "input", "a file of new texts to classify"))
    return predict_file(
        p.output_dir / "model",
        input_path,
        p.output_dir / "predictions.parquet",
        Runtime(progress=progress, **p.runtime),
        overwrite=True,
        trust_remote_code=p.config.trust_remote_code,
        **options,
    ).summary_lines()


def _call_cluster(p: Pipeline, options: dict[str, Any], progress: bool) -> list[str]:
    from ..cluster import cluster_file

    if options.get("label_column") or p.source.get("label_column"):
        options["label_column"] = _label(p, options)
    kwargs, opts = split_options("cluster", options)
    result = cluster_file(_features(p), p.output_dir / "clusters", opts, overwrite=True, progress=progress, **kwargs)
    return result.summary_lines(max_clusters=10)


def _call_index(p: Pipeline, options: dict[str, Any], progress: bool) -> list[str]:
    from ..index import build_index

    return build_index(
        _features(p), p.output_dir / "index", overwrite=True, progress=progress, **options
    ).summary_lines()


def _call_search(p: Pipeline, options: dict[str, Any], progress: bool) -> list[str]:
    import pyarrow.parquet as pq

    from ..index import Index

    queries = p.relative(_require(options, "queries", "a file of query texts"))
    out = p.output_dir / "search-hits.parquet"
    index = Index.load(p.output_dir / "index", trust_remote_code=p.config.trust_remote_code)
    counts = index.search_file(queries, out, overwrite=True, progress=progress, **options)
    hits = pq.read_table(out).to_pylist()
    lines = [f"{counts['searched']} queries, {counts['hits']} hits -> {out}"]
    for hit in (h for h in hits if h["rank"] == 1):
        shown = hit.get("text") or hit["id"]
        lines.append(f"  {hit.get('query_text')!r} -> {str(shown)[:90]!r} (score {hit['score']:.3f})")
    return lines


def _call_probe(p: Pipeline, options: dict[str, Any], progress: bool) -> list[str]:
    from ..probe import probe_file

    s = p.source
    options.setdefault("text_column", s.get("text_column", "text"))
    return probe_file(
        p.relative(s["path"]),
        _label(p, options),
        p.output_dir / "probe",
        p.config,
        Runtime(progress=progress, **p.runtime),
        overwrite=True,
        **options,
    ).summary_lines()


def _require(options: dict[str, Any], key: str, what: str) -> str:
    value = options.pop(key, None)
    if not value:
        raise ConfigError(f"needs {key}: {what}")
    return value


# stage: (module, function, options class, arguments the pipeline fills in, pipeline-only keys, call, output)
_SPECS = {
    "train": (
        "classify",
        "train",
        "ClassifierOptions",
        ("features", "model_dir"),
        ("label_column",),
        _call_train,
        "model",
    ),
    "predict": (
        "classify",
        "predict_file",
        None,
        ("model_dir", "input", "output"),
        ("input",),
        _call_predict,
        "predictions.parquet",
    ),
    "cluster": ("cluster", "cluster_file", "ClusterOptions", ("features", "output_dir"), (), _call_cluster, "clusters"),
    "index": ("index", "build_index", None, ("features", "output"), (), _call_index, "index"),
    "search": (
        "index",
        "Index.search_file",
        None,
        ("self", "output"),
        ("queries",),
        _call_search,
        "search-hits.parquet",
    ),
    "probe": ("probe", "probe_file", None, ("input", "output_dir", "config"), ("label_column",), _call_probe, "probe"),
}
# Pipeline-only keys the pipeline can fill from [source] instead; the stages that cannot run without a label.
_FROM_SOURCE = ("label_column",)
_NEEDS_LABEL = ("train", "probe")
# trust_remote_code is filled from the command line only: a stage table must not be able to grant it. engine (who
# does the work: this process, or Ray tasks for index build) is an object, not a setting of the file; pipelines run
# their stages in this process.
_RUNTIME_FILLED = ("options", "runtime", "progress", "overwrite", "trust_remote_code", "engine", *RUNTIME_KEYS)


@functools.cache
def _resolve(stage: str) -> tuple[Callable[..., Any], Any]:
    """The library function and options class of a stage, imported only when a file names the stage."""
    module_name, func_path, options_name, *_ = _SPECS[stage]
    module = importlib.import_module(f"embedkit.{module_name}")
    func: Any = module
    for part in func_path.split("."):  # "Index.search_file": a method, looked up through its class
        func = getattr(func, part)
    return func, getattr(module, options_name) if options_name else None


def allowed_keys(stage: str) -> list[str]:
    """Valid keys of a stage table: the function's keyword arguments, its options' fields, pipeline-only keys."""
    func, options_cls = _resolve(stage)
    _, _, _, fixed, extra, _, _ = _SPECS[stage]
    params = inspect.signature(func).parameters.values()
    names = {q.name for q in params if q.default is not q.empty and q.name not in (*fixed, *_RUNTIME_FILLED)}
    if options_cls is not None:
        names |= {f.name for f in dataclasses.fields(options_cls)}
    return sorted(names | set(extra))


def split_options(stage: str, options: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Separate a stage's function keyword arguments from the fields of its options object."""
    _, options_cls = _resolve(stage)
    fields = {f.name for f in dataclasses.fields(options_cls)}
    built = options_cls(**{k: v for k, v in options.items() if k in fields})
    return {k: v for k, v in options.items() if k not in fields}, built


def stage_outputs(p: Pipeline, stage: str) -> list[Path]:
    return [_features(p)] if stage == "embed" else [p.output_dir / _SPECS[stage][6]]
