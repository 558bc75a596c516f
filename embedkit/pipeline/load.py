"""A pipeline file parsed and validated into a :class:`Pipeline` (nothing runs)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artefact import _PLAIN_NAME
from ..config import ExtractConfig, Provenance, local_model_dir
from ..errors import ConfigError, InputError
from .schema import PipelineTable, SourceTable, _check_keys, _error, _extract_model, _validate, stage_model
from .stages import _NEEDS_LABEL, NEEDS, RUNTIME_KEYS, STAGES, _resolve, split_options

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


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
