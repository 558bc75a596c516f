"""Lazy re-exports (PEP 562): a package names what it offers without importing the heavy modules behind it.

``import embedkit`` must stay fast for commands that never run a model (#23): torch, scikit-learn and FAISS load
only when a name that needs them is first used.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``table`` maps each name to the module defining it (absolute, or
    relative to ``package`` when it starts with a dot), imported on first use; the value is then kept in the
    package, so later lookups never come back here."""

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name], package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__


__all__ = ["lazy_exports"]
