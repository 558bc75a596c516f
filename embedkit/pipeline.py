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
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import inspect
import json
import logging
import operator
import sys
import time
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from .artefact import _PLAIN_NAME, parse_json, sha256_file
from .cache import CACHE_DIR, cache_key, cached_features
from .config import ExtractConfig, Provenance, local_model_dir, setting_names
from .errors import ConfigError, EmbedkitError, InputError
from .sources import resolve_files
from .spec import InputSpec, Runtime
from .store import write_text_atomic

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)

STAGES = ("embed", "train", "predict", "cluster", "index", "search", "probe")
STATE_FILE = "pipeline-state.json"
RUNTIME_KEYS = ("device", "batch_tokens", "threads")  # [extract] keys that go to embed_file, not ExtractConfig
NEEDS = {"predict": "train", "search": "index"}  # stage: the stage whose output it reads


@dataclass
class Pipeline:
    """A parsed pipeline file; ``stages`` maps each stage named in the file to its (raw) options table."""

    path: Path
    name: str
    output_dir: Path
    source: dict[str, Any]
    config: ExtractConfig
    runtime: dict[str, Any]
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def relative(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.path.parent / p)


@dataclass
class StageOutcome:
    stage: str
    ran: bool
    seconds: float
    summary: str
    outputs: list[Path]


def _error(path: Path, table: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: [{table}] {message}")


def _check_keys(path: Path, table: str, values: dict[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise _error(
            path, table, f"unknown key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(sorted(allowed))}"
        )


# ---------------------------------------------------------------------------------------------- schema

# extra="forbid": a misspelt key is an error, not silently a default.
_FORBID = ConfigDict(extra="forbid")


class PipelineTable(BaseModel):
    """``[pipeline]``: the run's name and where its outputs go (both optional)."""

    model_config = _FORBID
    name: str | None = None
    output_dir: str | None = None


class SourceTable(BaseModel):
    """``[source]``: the input of the embed stage (``embed_file``'s input and column arguments)."""

    model_config = _FORBID
    path: str = Field(description="the input file, directory or glob")
    text_column: str = "text"
    id_column: str | None = None
    label_column: str | None = None
    keep: list[str] = []
    keep_text: bool = True
    format: str | None = None


def _hint(func: Callable[..., Any], name: str) -> Any:
    """The annotation of one parameter, evaluated (the modules use ``from __future__ import annotations``).

    One at a time, not typing.get_type_hints: other parameters may name types imported for type checkers only.
    """
    annotation = inspect.signature(func).parameters[name].annotation
    # What typing.get_type_hints does, for one name: the string is embedkit's own source, not file input.
    return eval(annotation, func.__globals__) if isinstance(annotation, str) else annotation


def _toml_value(hint: Any) -> Any:
    """``InputSpec | str | Path`` -> ``str | Path``: a file gives the input as a path, a spec is the API's."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and InputSpec in args:
        return functools.reduce(operator.or_, [a for a in args if a is not InputSpec])
    return hint


def _one_or_many(hint: Any) -> Any:
    """``tuple[X, ...]`` -> ``X | tuple[X, ...]``: ExtractConfig takes a single layer or pooling for a list."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        return args[0] | hint
    return hint


@functools.cache
def _extract_model() -> type[BaseModel]:
    """``[extract]``: ExtractConfig's settings plus embed_file's run-time keywords (device, batch_tokens, threads)."""
    from .embed import embed_file

    hints = typing.get_type_hints(ExtractConfig)
    fields: dict[str, Any] = {name: (_one_or_many(hints[name]), None) for name in setting_names()}
    fields |= {name: (_hint(embed_file, name), None) for name in RUNTIME_KEYS}
    return create_model("ExtractTable", __config__=_FORBID, **fields)


@functools.cache
def stage_model(stage: str) -> type[BaseModel]:
    """A stage table's model: the keys of ``allowed_keys`` with the types their function or options declare.

    A key is required only when the function has no default for it and the pipeline has no other source for it
    (``label_column`` may come from [source]).
    """
    func, options_cls = _resolve(stage)
    params = inspect.signature(func).parameters
    option_hints = typing.get_type_hints(options_cls) if options_cls is not None else {}
    fields: dict[str, Any] = {}
    for name in allowed_keys(stage):
        if name in option_hints:
            fields[name] = (option_hints[name], None)
        else:
            required = params[name].default is inspect.Parameter.empty and name not in _FROM_SOURCE
            fields[name] = (_toml_value(_hint(func, name)), ... if required else None)
    return create_model(f"{stage.title()}Table", __config__=_FORBID, **fields)


_NAMES = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings")}
_NAMES |= {bool: ("true or false", "booleans"), Path: ("a string", "strings")}


def _describe(hint: Any, plural: bool = False) -> str:
    """What a value of type ``hint`` looks like in TOML: 'an integer', 'a list of strings', ..."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        # None is a default, never written: TOML has no null.
        return " or ".join(dict.fromkeys(_describe(a, plural) for a in args if a is not type(None)))
    if origin in (tuple, list, Sequence):
        fixed = origin is tuple and args[-1:] != (Ellipsis,)
        what = f"a list of {len(args)} " if fixed else "a list of "
        return ("lists" if plural else what + _describe(args[0], plural=True)) if args else "a list"
    singular, many = _NAMES.get(hint, (getattr(hint, "__name__", str(hint)),) * 2)
    return many if plural else singular


def _validate(path: Path, table: str, model: type[BaseModel], values: dict[str, Any]) -> None:
    """Check one table against its model; a ConfigError names the file, the table, each bad key and its type.

    Validated as JSON, strictly: JSON's strict mode takes a TOML array for a tuple and a string for a Path (as
    the library functions do) but never "5" for 5. The values themselves are passed on unchanged.
    """
    try:
        model.model_validate_json(json.dumps(values, default=str), strict=True)
    except ValidationError as exc:
        fields = model.model_fields
        unknown: list[str] = []
        missing: list[str] = []
        wrong: dict[str, Any] = {}  # key: the value the file gave it
        for err in exc.errors():
            key = str(err["loc"][0])
            if err["type"] == "extra_forbidden":
                unknown.append(key)
            elif err["type"] == "missing":
                missing.append(key)
            else:
                wrong.setdefault(key, values[key])
        problems = []
        if unknown:
            valid = ", ".join(sorted(fields))
            problems.append(f"unknown key(s) {', '.join(map(repr, sorted(unknown)))}; valid: {valid}")
        for key in missing:
            problems.append(f"needs {key!r} ({fields[key].description or _describe(fields[key].annotation)})")
        for key, value in wrong.items():
            got = json.dumps(value, default=str, ensure_ascii=False)
            problems.append(f"{key}: expected {_describe(fields[key].annotation)}, got {got}")
        raise ConfigError("\n".join(f"{path}: [{table}] {problem}" for problem in problems)) from None


def load_pipeline(
    path: str | Path, *, model: str | None = None, output_dir: str | Path | None = None, trust_remote_code: bool = False
) -> Pipeline:
    """Parse and validate a pipeline file (nothing runs). ``model`` overrides the file's [extract] model.

    A pipeline file is shared like any artefact: its own ``trust_remote_code`` is ignored (with a warning) and
    ``trust_remote_code`` (``embedkit run --trust-remote-code``) decides for every stage.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"pipeline file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read pipeline file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    tables = ("pipeline", "source", "extract", *STAGES[1:])
    _check_keys(path, "top level", data, tables)
    for name, value in data.items():
        if not isinstance(value, dict):
            raise _error(path, name, "must be a table ([name] followed by key = value lines)")
    head = data.get("pipeline", {})
    _validate(path, "pipeline", PipelineTable, head)
    source = dict(data.get("source", {}))
    _validate(path, "source", SourceTable, source)
    extract = dict(data.get("extract", {}))
    _validate(path, "extract", _extract_model(), extract)
    runtime = {k: extract.pop(k) for k in RUNTIME_KEYS if k in extract}
    asked = extract.pop("trust_remote_code", False) not in (False, None)
    extract["trust_remote_code"] = bool(trust_remote_code)
    if model:
        extract["model"] = model
    elif isinstance(extract.get("model"), str):
        extract["model"] = _file_relative_model(path, extract["model"])
    try:
        config = ExtractConfig(**extract)
    except ConfigError as exc:
        raise _error(path, "extract", str(exc)) from exc
    except (TypeError, ValueError) as exc:
        raise _error(path, "extract", f"bad value: {exc}") from exc
    if asked:  # the file's own trust_remote_code is never used; loading the model says so (once)
        config = config.replace(provenance=Provenance(f"{path} [extract]", asked_for_remote_code=True))
    stages = {name: dict(data[name]) for name in STAGES[1:] if name in data}
    for stage, options in stages.items():
        _validate(path, stage, stage_model(stage), options)
        if stage in _NEEDS_LABEL and not (options.get("label_column") or source.get("label_column")):
            raise _error(path, stage, "needs 'label_column', in this table or in [source]")
    for stage, needed in NEEDS.items():
        if stage in stages and needed not in stages:
            raise _error(path, stage, f"needs a [{needed}] stage in the same file")
    name = head.get("name")
    # The name becomes a folder under embedkit-out/: "../x" or "/x" would put the outputs (which every run
    # replaces) anywhere the file's author chose, outside the place the documentation promises.
    if name is not None and (not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name)):
        raise _error(path, "pipeline", f"name must be a plain file name (letters, digits, '_', '-', '.'), got {name!r}")
    name = name or path.stem
    stored_dir = head.get("output_dir")
    if stored_dir is not None and (not isinstance(stored_dir, str) or not stored_dir.strip()):
        raise _error(path, "pipeline", f"output_dir must be a path string, got {stored_dir!r}")
    out = Path(output_dir or stored_dir or Path("embedkit-out") / name)
    pipeline = Pipeline(
        path=path, name=name, output_dir=out, source=source, config=config, runtime=runtime, stages=stages
    )
    for stage, options in stages.items():
        if _resolve(stage)[1] is not None:
            try:  # building the options object checks their values now, not after the embedding
                split_options(stage, options)
            except ConfigError as exc:
                raise _error(path, stage, str(exc)) from exc
            except (TypeError, ValueError) as exc:
                raise _error(path, stage, f"bad value: {exc}") from exc
    return pipeline


def _file_relative_model(path: Path, model: str) -> str:
    """The file's [extract] model: a directory path resolved against the file (like every path in it), or a hub id.

    Against the working directory instead, `embedkit run` started elsewhere would load another model, or none.
    """
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") > 1
    if not looks_like_path and local_model_dir(str(path.parent / model)) is None:
        return model  # "name" or "owner/name" with no such directory next to the file: a hub id
    try:
        return str((path.parent / Path(model).expanduser()).resolve())
    except (OSError, ValueError, RuntimeError):  # not a usable path at all: loading it will say so
        return model


# ---------------------------------------------------------------------------------------------- fingerprints


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _files_digest(paths: list[Path]) -> list[str]:
    return [sha256_file(p) for p in paths]


# ---------------------------------------------------------------------------------------------- stages


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
    from .classify import train

    label = _label(p, options)
    kwargs, opts = split_options("train", options)
    return train(_features(p), label, p.output_dir / "model", options=opts, overwrite=True, **kwargs).summary_lines()


def _call_predict(p: Pipeline, options: dict[str, Any], progress: bool) -> list[str]:
    from .classify import predict_file

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
    from .cluster import cluster_file

    if options.get("label_column") or p.source.get("label_column"):
        options["label_column"] = _label(p, options)
    kwargs, opts = split_options("cluster", options)
    result = cluster_file(_features(p), p.output_dir / "clusters", opts, overwrite=True, progress=progress, **kwargs)
    return result.summary_lines(max_clusters=10)


def _call_index(p: Pipeline, options: dict[str, Any], progress: bool) -> list[str]:
    from .index import build_index

    return build_index(
        _features(p), p.output_dir / "index", overwrite=True, progress=progress, **options
    ).summary_lines()


def _call_search(p: Pipeline, options: dict[str, Any], progress: bool) -> list[str]:
    import pyarrow.parquet as pq

    from .index import Index

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
    from .probe import probe_file

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
# trust_remote_code is filled from the command line only: a stage table must not be able to grant it.
_RUNTIME_FILLED = ("options", "runtime", "progress", "overwrite", "trust_remote_code", *RUNTIME_KEYS)


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


def _load_state(path: Path) -> dict[str, Any]:
    # Only a record of which stages are up to date: anything unreadable or of the wrong shape (a kill before it
    # existed, a hand edit) means "nothing known", so every stage whose record is gone simply runs again.
    try:
        state = parse_json(path.read_bytes(), where=path)
    except (OSError, InputError):
        return {}
    if not isinstance(state, dict):
        return {}
    return {stage: record for stage, record in state.items() if isinstance(record, dict)}


def run_pipeline(
    path: str | Path,
    *,
    force: bool = False,
    model: str | None = None,
    output_dir: str | Path | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    trust_remote_code: bool = False,
) -> list[StageOutcome]:
    """Run a pipeline file; stages whose fingerprint is unchanged (and whose outputs exist) are skipped.

    ``trust_remote_code`` lets the model's own code run in every stage; the file cannot ask for it.
    """
    p = load_pipeline(path, model=model, output_dir=output_dir, trust_remote_code=trust_remote_code)
    try:
        p.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output directory {p.output_dir}: {exc}") from exc
    state_path = p.output_dir / STATE_FILE
    state = {} if force else _load_state(state_path)
    from .embed import model_files  # lazily, like every stage: `embedkit run --help` stays fast

    source_files = resolve_files(p.relative(p.source["path"]))
    # A checkpoint replaced at the same local path is another model: its stat data is part of the key.
    model_stat = model_files(p.config.model) if local_model_dir(p.config.model) is not None else None  # hub id: None
    input_digests = _files_digest(source_files)
    features_key = cache_key(input_digests, input_spec(p), p.config, model_stat)
    upstream = {"embed": _digest(input_digests, p.source, p.config.vector_settings(), model_stat)}
    outcomes = []
    for stage in ("embed", *[s for s in STAGES[1:] if s in p.stages]):
        options = dict(p.stages.get(stage, {}))
        parent = NEEDS.get(stage, "embed")
        outputs = stage_outputs(p, stage)
        if stage == "embed":
            fingerprint = upstream["embed"]
        else:
            extra_files = [p.relative(options["input"])] if stage == "predict" and "input" in options else []
            if stage == "search" and isinstance(options.get("queries"), str):
                extra_files = [p.relative(options["queries"])]
            fingerprint = _digest(
                upstream[parent], stage, options, _files_digest([f for f in extra_files if f.is_file()])
            )
        upstream[stage] = fingerprint
        done = state.get(stage, {})
        if done.get("fingerprint") == fingerprint and all(o.exists() for o in outputs):
            echo(f"[{stage}] unchanged, skipped ({', '.join(str(o) for o in outputs)})")
            outcomes.append(StageOutcome(stage, False, 0.0, "skipped", outputs))
            continue
        echo(f"[{stage}] running")
        started = time.perf_counter()
        try:
            summary = (
                _call_embed(p, features_key, progress, force)
                if stage == "embed"
                else _SPECS[stage][5](p, options, progress)
            )
        except EmbedkitError as exc:
            raise type(exc)(f"{p.path} [{stage}]: {exc}") from exc
        seconds = time.perf_counter() - started
        state[stage] = {"fingerprint": fingerprint, "seconds": round(seconds, 2)}
        # Later stages' records depend on this one; drop them so they rerun even if this run stops early.
        for later in STAGES[STAGES.index(stage) + 1 :]:
            if later in state and state[later].get("fingerprint") != upstream.get(later):
                state.pop(later, None)
        write_text_atomic(state_path, json.dumps(state, indent=1))
        text = "\n".join(summary)
        echo(f"[{stage}] done in {seconds:.1f}s: {text}")
        outcomes.append(StageOutcome(stage, True, seconds, text, outputs))
    return outcomes
