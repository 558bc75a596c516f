"""The typed tables of a pipeline file, and their validation: every error names the file, table, key and type.

[pipeline] and [source] are declared here; [extract] and the stage tables are derived from the library's own
signatures and dataclasses (their annotations are the types), so the file and the Python API cannot drift apart.
"""

from __future__ import annotations

import functools
import inspect
import json
import operator
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from ..config import ExtractConfig, setting_names
from ..errors import ConfigError
from ..spec import InputSpec
from .stages import _FROM_SOURCE, RUNTIME_KEYS, _resolve, allowed_keys


def _error(path: Path, table: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: [{table}] {message}")


def _check_keys(path: Path, table: str, values: dict[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise _error(
            path, table, f"unknown key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(sorted(allowed))}"
        )


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
    from ..embed import embed_file

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
