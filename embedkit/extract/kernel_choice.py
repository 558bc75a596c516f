"""Choices measured once per machine and model shape, then remembered: the one cache of every speed test.

Two kinds of answer live here (``ANSWERS``):

- ``kernels``: the CPU kernels of a model's linear layers (``backends.onednn_is_faster`` times one layer both
  ways; on the 2-core dev machine that cost about a second of every model load, #23);
- ``auto`` and ``bf16``: the engine a backend runs on (backend_choice.py: torch or OpenVINO, timed on the
  extractor's own batches), which costs an ONNX export and seconds of timing.

Each answer only changes with the machine, the torch build (and the runtimes' versions), the thread count, the
model's shape or the candidates, which is what the key covers. The answers are kept in a small JSON file in the
user's cache directory (``$EMBEDKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/embedkit``, else ``~/.cache/embedkit``),
one entry per key.

The file is data that chooses among built-in code paths and nothing else: an entry whose choice is not one of its
kind's ``ANSWERS`` (or has a wrong type) is ignored and measured again, and a cache that cannot be read or written
(a read-only home, a full disk, a lock held by another process) only costs the measurement, never the command.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import EmbedkitError

log = logging.getLogger(__name__)

CACHE_ENV = "EMBEDKIT_CACHE_DIR"
CACHE_FILE = "kernel-choice.json"
FORMAT = 1
# The kernels a linear layer can run with: oneDNN with prepacked weights, or torch's default (BLAS) path.
CHOICES = ("onednn", "default")
# Every kind of choice and the answers it may hold; nothing else read from the file is ever acted on.
ANSWERS: dict[str, tuple[str, ...]] = {
    "kernels": CHOICES,
    "auto": ("torch", "openvino"),  # backend auto: the engines whose vectors equal fp32's (backend_choice.py)
    "bf16": ("torch-bf16", "openvino-bf16"),  # backend bf16 on a CPU with native bf16
}
KNOWN = frozenset(answer for answers in ANSWERS.values() for answer in answers)
# A machine sees a handful of model shapes; past this many entries the oldest are dropped, so the file (read on
# every large job) stays a few kilobytes whatever happens.
MAX_ENTRIES = 64
MAX_FILE_BYTES = 1 << 20


def cache_dir() -> Path:
    """Where embedkit keeps machine-local caches (not artefacts: deleting it only costs re-measuring)."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen:
        return Path(chosen).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "embedkit"


@lru_cache(maxsize=1)
def cpu_identity() -> dict[str, str]:
    """The CPU model and its instruction-set flags (what oneDNN picks its kernels by), as far as the OS tells."""
    model, flags = platform.processor() or "", ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Processor", "cpu model") and not model.strip():
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(value.split()))
                if model and flags:
                    break
    except OSError:  # not Linux: platform.processor() is what there is
        pass
    return {"machine": platform.machine(), "cpu": model, "flags": hashlib.sha256(flags.encode()).hexdigest()[:16]}


def choice_key(
    shape: dict[str, Any], kind: str = "kernels", candidates: tuple[str, ...] | None = None
) -> tuple[str, dict[str, Any]]:
    """The cache key of a measurement of a model of ``shape`` on this machine: (digest, what it covers).

    ``candidates`` [default: every answer of ``kind``] are the choices that were measured; ``shape`` also carries
    whatever else the answer depends on (the runtimes' versions, the batch size).
    """
    import torch

    covers = {
        **cpu_identity(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "candidates": list(candidates or ANSWERS[kind]),
        "shape": shape,
    }
    if kind != "kernels":  # the kernel keys stay as they were, so their cached answers stay valid
        covers["kind"] = kind
    return hashlib.sha256(json.dumps(covers, sort_keys=True, default=str).encode()).hexdigest(), covers


def _read_entries(path: Path) -> dict[str, Any]:
    """The stored entries, or {} when there is no usable file (missing, unreadable, oversized, not our format)."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            log.debug("%s is too large to be ours; ignoring it", path)
            return {}
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        log.debug("cannot read the kernel choice cache %s (%s); measuring again", path, exc)
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def _valid_choice(entry: object, answers: frozenset[str] | tuple[str, ...] = KNOWN) -> str | None:
    choice = entry.get("choice") if isinstance(entry, dict) else None
    return choice if isinstance(choice, str) and choice in answers else None


def lookup(key: str, kind: str = "kernels") -> str | None:
    """The remembered choice for ``key``: one of ``kind``'s ANSWERS, or None (never measured, or not to be trusted)."""
    return _valid_choice(_read_entries(cache_dir() / CACHE_FILE).get(key), ANSWERS[kind])


def entry(key: str) -> dict[str, Any] | None:
    """The stored entry for ``key`` as it is (for messages only: what was measured), or None."""
    found = _read_entries(cache_dir() / CACHE_FILE).get(key)
    return found if isinstance(found, dict) else None


def remember(
    key: str, covers: dict[str, Any], choice: str, kind: str = "kernels", measured: dict[str, float] | None = None
) -> None:
    """Store ``choice`` for ``key`` (atomically, under the file's lock); any failure is logged and ignored.

    ``measured``: the figures the choice was made by (tokens/s per candidate), kept for ``-v`` messages.
    """
    from ..artefact import writing_file

    if choice not in ANSWERS[kind]:
        raise ValueError(f"not a {kind} choice: {choice!r}")
    path = cache_dir() / CACHE_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # wait=False: another process writing the cache at this instant measured the same thing; skipping is fine.
        with writing_file(path, overwrite=True, wait=False) as tmp:
            entries = {k: v for k, v in _read_entries(path).items() if _valid_choice(v) and k != key}
            entries[key] = {"choice": choice, "covers": covers}
            if measured:
                entries[key]["measured"] = {name: round(float(rate), 3) for name, rate in measured.items()}
            kept = dict(list(entries.items())[-MAX_ENTRIES:])  # insertion order: the newest last
            tmp.write_text(json.dumps({"format": FORMAT, "entries": kept}, indent=1, sort_keys=False) + "\n")
    except (OSError, EmbedkitError) as exc:  # read-only or full cache dir, a lock held elsewhere
        log.debug("could not store the kernel choice in %s: %s", path, exc)


def cached_choice(shape: dict[str, Any], measure: Callable[[], str]) -> str:
    """The kernel choice for a model of ``shape`` on this machine: remembered, else ``measure()``d and remembered."""
    key, covers = choice_key(shape)
    choice = lookup(key)
    if choice is not None:
        log.debug("kernel choice %s (cached in %s)", choice, cache_dir() / CACHE_FILE)
        return choice
    choice = measure()
    log.debug("kernel choice %s (measured; stored in %s)", choice, cache_dir() / CACHE_FILE)
    remember(key, covers, choice)
    return choice


__all__ = ["ANSWERS", "CACHE_ENV", "CHOICES", "cache_dir", "cached_choice", "choice_key", "entry", "lookup", "remember"]
