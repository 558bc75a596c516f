"""Importing libraries without the torch or pandas they would pull in for nothing (cold start, #23).

``import skops.io`` builds its list of trusted types from ``sklearn.utils.all_estimators()``, which walks every
scikit-learn package with ``pkgutil.walk_packages`` and so imports each one, including the array-API wrapper
``sklearn.externals.array_api_compat.torch``, which imports torch: 6-8 s of a loaded 2-core machine spent by
``embedkit train`` and ``embedkit predict`` on a library they never call. No estimator lives under ``externals``
(all_estimators skips it), so while skops builds that list the wrapper is refused like a missing optional
package, which walk_packages passes over. The list is the same; torch is not loaded; a later real use of the
wrapper (scikit-learn's array API with torch tensors) imports it as usual, since nothing is left in sys.modules.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from types import ModuleType

import numpy as np
import pyarrow as pa

# Wrappers that import a heavy framework at import time; all_estimators() needs none of them.
_SKIPPED_WRAPPERS = ("sklearn.externals.array_api_compat.torch",)


class _SkipWrappers(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == w or name.startswith(w + ".") for w in _SKIPPED_WRAPPERS):
            raise ModuleNotFoundError(f"{name} is not needed to list scikit-learn's estimators", name=name)
        return None


def skops_io() -> ModuleType:
    """``skops.io``, imported without importing torch (see the module docstring)."""
    if "skops.io" in sys.modules or "torch" in sys.modules:  # nothing left to save
        return importlib.import_module("skops.io")
    finder = _SkipWrappers()
    sys.meta_path.insert(0, finder)
    try:
        return importlib.import_module("skops.io")
    finally:
        sys.meta_path.remove(finder)


def arrow_positions(positions: np.ndarray) -> pa.Array:
    """Row numbers as an Arrow int64 array (for ``Table.take``) without importing pandas.

    ``pa.array`` asks pyarrow's pandas shim whether its input is a pandas object, and the shim's first question
    imports pandas: 0.2-0.3 s CPU that a one-query ``embedkit search`` spent only to show its hits (#23). Wrapping
    the numpy buffer asks nothing; the values are the same.
    """
    values = np.ascontiguousarray(positions, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


__all__ = ["arrow_positions", "skops_io"]
