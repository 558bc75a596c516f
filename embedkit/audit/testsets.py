"""Association tests (:class:`AssociationTest`) and the user's own from TOML (strictly validated).

The built-in sets (builtin_tests.py) cover the categories GPT-2's model card warns about (gender, race, religion),
plus the classic flowers/insects x pleasant/unpleasant test as a baseline: an association people share widely, so
a model that shows nothing there cannot be read for the others either. The method is Caliskan et al. (2017), on
sentence templates as in SEAT (May et al., 2019). The word lists and templates were written for embedkit (common
English words and first names chosen by the authors); no published list was copied.

A user file is a list of ``[[test]]`` tables::

    [[test]]
    name = "tools-weapons"           # required, unique
    x = ["hammer", "saw"]            # required: target words X ...
    y = ["rifle", "sword"]           # ... and Y
    a = ["useful", "safe"]           # required: attribute words A ...
    b = ["dangerous", "harmful"]     # ... and B
    templates = ["This is a {}."]    # optional: each must hold {}; ["{}"] embeds the bare word [default: bare word]
    x_name = "tools"                 # optional names of the four sets, used in the report's sentences
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover  (Python 3.10: the same parser, from PyPI; declared in pyproject.toml)
    import tomli as tomllib

from ..errors import ConfigError, InputError

SLOT = "{}"
BARE = (SLOT,)
MAX_TEST_FILE_BYTES = 4 << 20  # a test file is a few kilobytes; a huge one is a mistake
MAX_WORDS = 1_000  # per list


@dataclass(frozen=True)
class AssociationTest:
    """One WEAT: target sets X, Y and attribute sets A, B, embedded through ``templates``."""

    name: str
    x: tuple[str, ...]
    y: tuple[str, ...]
    a: tuple[str, ...]
    b: tuple[str, ...]
    templates: tuple[str, ...] = BARE
    x_name: str = "X"
    y_name: str = "Y"
    a_name: str = "A"
    b_name: str = "B"
    category: str = "user"

    def sentences(self, word: str) -> list[str]:
        # str.replace, not str.format: a template may hold other braces ("{x} marks {}") without breaking.
        return [template.replace(SLOT, word) for template in self.templates]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "category": self.category,
            "x": list(self.x),
            "y": list(self.y),
            "a": list(self.a),
            "b": list(self.b),
            "templates": list(self.templates),
            "x_name": self.x_name,
            "y_name": self.y_name,
            "a_name": self.a_name,
            "b_name": self.b_name,
        }


# ---------------------------------------------------------------------------------------------- user TOML


def _schema():
    # pydantic loads on first use: only `audit --tests` needs it.
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

    Word = Annotated[str, StringConstraints(strict=True, strip_whitespace=True, min_length=1, max_length=200)]
    # WEAT sets are a few dozen words; the cap keeps the cosine matrix of one test (targets x attributes) at a few
    # megabytes instead of letting a pasted vocabulary allocate gigabytes.
    Words = Annotated[list[Word], Field(min_length=1, max_length=MAX_WORDS)]
    Name = Annotated[str, StringConstraints(strict=True, strip_whitespace=True, min_length=1, max_length=200)]

    class TestSpec(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)

        name: Name
        x: Words
        y: Words
        a: Words
        b: Words
        templates: Annotated[list[Word], Field(min_length=1, max_length=100)] = [SLOT]
        x_name: Name = "X"
        y_name: Name = "Y"
        a_name: Name = "A"
        b_name: Name = "B"

        @field_validator("templates")
        @classmethod
        def _has_slot(cls, templates: list[str]) -> list[str]:
            for template in templates:
                if SLOT not in template:
                    raise ValueError(f"template {template!r} has no {SLOT} for the word")
            return templates

        @field_validator("x", "y", "a", "b")
        @classmethod
        def _distinct(cls, words: list[str]) -> list[str]:
            seen = set()
            for word in words:
                if word in seen:
                    raise ValueError(f"{word!r} is listed twice (it would count twice)")
                seen.add(word)
            return words

    class TestFile(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)

        test: Annotated[list[TestSpec], Field(min_length=1, max_length=1_000)]

    return TestFile


def _where(document: dict, loc: tuple) -> str:
    """'test 'name' (#2), key 'x'' from a pydantic error location such as ('test', 1, 'x', 3)."""
    if not loc:
        return "top level"
    if loc[0] != "test" or len(loc) < 2 or not isinstance(loc[1], int):
        return f"key {'.'.join(map(str, loc))!r}"
    index = loc[1]
    raw = document.get("test")
    entry = raw[index] if isinstance(raw, list) and index < len(raw) else None
    name = entry.get("name") if isinstance(entry, dict) else None
    test = f"test {name!r} (#{index + 1})" if isinstance(name, str) else f"test #{index + 1}"
    if len(loc) == 2:
        return test
    key = str(loc[2]) + (f"[{loc[3]}]" if len(loc) > 3 and isinstance(loc[3], int) else "")
    return f"{test}, key {key!r}"


def load_tests(path: str | Path) -> list[AssociationTest]:
    """Read and validate a TOML file of ``[[test]]`` tables.

    Raises:
        InputError: the file is missing or unreadable.
        ConfigError: not TOML, or any key missing, unknown, of the wrong type or empty, a template without ``{}``,
            a word listed twice, or two tests of one name; the message names the file, the test and the key.
    """
    from pydantic import ValidationError

    path = Path(path)
    try:
        if path.stat().st_size > MAX_TEST_FILE_BYTES:
            raise ConfigError(
                f"{path}: {path.stat().st_size} bytes is far larger than any test file; refusing to read it"
            )
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"test file {path} does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot read test file {path}: {exc.strerror or exc}") from exc
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        parsed = _schema().model_validate(document)
    except ValidationError as exc:
        problems = []
        for error in exc.errors()[:5]:
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "missing":
                message = (
                    "missing (every test needs name, x, y, a and b)"
                    if error["loc"][:1] == ("test",) and len(error["loc"]) > 2
                    else "missing: the file needs [[test]] tables"
                )
            elif error["type"] == "extra_forbidden":
                message = "unknown key (allowed: name, x, y, a, b, templates, x_name, y_name, a_name, b_name)"
            problems.append(f"{_where(document, tuple(error['loc']))}: {message}")
        more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
        raise ConfigError(f"{path}: " + "; ".join(problems) + more) from None
    tests, names = [], set()
    for i, spec in enumerate(parsed.test):
        if spec.name in names:
            raise ConfigError(f"{path}: test {spec.name!r} (#{i + 1}), key 'name': another test already has this name")
        names.add(spec.name)
        for first, second in (("x", "y"), ("a", "b")):
            shared = sorted(set(getattr(spec, first)) & set(getattr(spec, second)))
            if shared:
                raise ConfigError(
                    f"{path}: test {spec.name!r} (#{i + 1}), keys {first!r} and {second!r}: "
                    f"{', '.join(map(repr, shared))} in both (a word cannot be on both sides)"
                )
        if len(spec.x) + len(spec.y) < 3:
            raise ConfigError(
                f"{path}: test {spec.name!r} (#{i + 1}), keys 'x' and 'y': need at least 3 words together"
            )
        tests.append(
            AssociationTest(
                spec.name,
                tuple(spec.x),
                tuple(spec.y),
                tuple(spec.a),
                tuple(spec.b),
                tuple(spec.templates),
                spec.x_name,
                spec.y_name,
                spec.a_name,
                spec.b_name,
            )
        )
    return tests


__all__ = ["BARE", "SLOT", "AssociationTest", "load_tests"]
