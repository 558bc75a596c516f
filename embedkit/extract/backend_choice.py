"""Which engine a backend runs on here (#21): ``auto`` and ``bf16`` choose by a measurement cached per machine.

A backend names the vectors (and is recorded in metadata); an engine is the code that computes them:

- ``auto`` runs on ``torch`` (fp32, with its own kernel choice, backends.py) or ``openvino`` (OpenVINO fp32, when
  installed): the engines whose vectors equal fp32's (cosine >= 0.99999). It never picks an approximate engine:
  int8 moves vectors by ~1e-3 and bf16 by ~1e-4 of cosine, and features made on two machines must not differ
  with what each happened to measure, so approximation stays something a user asks for by name. The engine it
  ran on is recorded as the backend (``torch`` or ``openvino``), so later stages re-embed queries the same way.
- ``bf16`` on a CPU with native bf16 runs on ``torch-bf16`` (bf16 linear layers, bf16.py) or ``openvino-bf16``
  (OpenVINO at bf16 inference precision, when installed); it stays recorded as ``bf16`` (both are bf16 products
  with fp32 accumulation, within bf16's tolerance of fp32). Without native bf16: ``torch`` fp32, and a message.
- every other backend has one engine, its own name.

Measuring costs an ONNX export (seconds to tens of seconds, cached per weights by onnx_export.py) and a few
seconds of timing, so it runs only for a job of at least ``MEASURE_AFTER_TOKENS`` (the embed of many rows: the
embed driver passes its input's size). Smaller jobs (a one-query search, a server's start, a short file) take
the cached answer, an OpenVINO one only where the export of these very weights is already built, and otherwise
the first (torch) engine, without storing anything. The answer is cached with the kernel choice
(kernel_choice.py): per machine, torch and runtime versions, threads, model shape, batch size and candidates.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from . import kernel_choice
from .batching import plan_batches
from .bf16 import native_bf16

if TYPE_CHECKING:
    from ..config import ExtractConfig
    from .extractor import Extractor

log = logging.getLogger(__name__)

ENGINES = ("torch", "int8", "torch-bf16", "openvino", "openvino-bf16", "ort-int8")
CHOOSING = {"auto": "auto", "bf16": "bf16"}  # backend -> its kind of answer in the cache (kernel_choice.ANSWERS)
# Jobs below this many tokens (estimated) never measure. The export of GPT-2 small plus the timing below cost ~60 s
# on the busy 2-core dev VM (RESULTS.md), ~25,000 of its tokens; OpenVINO saves ~12% there, so one job repays it at
# ~200,000 tokens, and every later job on this machine gets the answer free: 100,000 (~400 kB of text) splits it.
MEASURE_AFTER_TOKENS = 100_000
# Bytes of input text per token, to estimate a file's tokens from its size (English with GPT-2's BPE: ~4.3).
BYTES_PER_TOKEN = 4
# Tokens timed per candidate and round (after one warm-up batch), rounds interleaved, best round kept.
MEASURE_TOKENS = 2048
ROUNDS = 2
# Row lengths of the timed batches: a spread like real text (attention's share grows with length).
SAMPLE_LENGTHS = (24, 48, 96, 192)
# A runtime engine is chosen over the first (torch) one only when this much faster: torch needs no export and no
# extra package at search time, and closer rates are within the noise of a few seconds of timing.
MARGIN = 1.03


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _runtime_installed(backend: str) -> bool:
    """Whether every package runtime backend ``backend`` imports is installed (runtime_backends.RUNTIME_BACKENDS)."""
    from .runtime_backends import RUNTIME_BACKENDS

    return all(_installed(name) for name in RUNTIME_BACKENDS[backend][0])


def runnable_here(config: ExtractConfig) -> ExtractConfig:
    """``config``, or for stored settings (an artefact's: ``provenance`` set) whose backend's runtime is not
    installed here but whose vectors another backend makes too (``SAME_VECTORS``: features auto ran on OpenVINO),
    the same settings on that backend. Queries against such features then work on a machine without OpenVINO, with
    the same vectors; a backend the user names on the command line still fails with the extra to install.
    """
    from ..config import SAME_VECTORS
    from .runtime_backends import RUNTIME_BACKENDS

    twin = SAME_VECTORS.get(config.backend)
    if twin is None or config.provenance is None:
        return config
    if _runtime_installed(config.backend):
        return config
    packages, extra = RUNTIME_BACKENDS[config.backend]
    log.warning(
        "the stored backend %r needs %s, which is not installed here; re-embedding with %r, which makes the same "
        "vectors (pip install 'embedkit[%s]' to use %s)",
        config.backend,
        " and ".join(packages),
        twin,
        extra,
        config.backend,
    )
    return config.replace(backend=twin)


def candidates(backend: str, device: torch.device) -> tuple[str, ...]:
    """The engines ``backend`` may run on, on ``device``; the first is the one used without a measurement."""
    on_cpu = device.type == "cpu"
    openvino = on_cpu and _runtime_installed("openvino")
    if backend == "auto":
        return ("torch", "openvino") if openvino else ("torch",)
    if backend == "bf16":
        if not on_cpu or not native_bf16():  # CUDA: the extractor's autocast runs bf16; no native bf16: fp32
            return ("torch",)
        return ("torch-bf16", "openvino-bf16") if openvino else ("torch-bf16",)
    return (backend,)


def recorded(backend: str, engine: str) -> str:
    """The backend to record for vectors ``backend`` made on ``engine``: auto's engine is a backend of its own."""
    return engine if backend == "auto" else backend


def estimate_tokens(byte_count: int) -> int:
    """Tokens in ``byte_count`` bytes of text, roughly (for MEASURE_AFTER_TOKENS)."""
    return byte_count // BYTES_PER_TOKEN


@dataclass
class Choice:
    """The engine a backend runs on and how it was chosen (``note``: for -v logs and the embed summary)."""

    engine: str
    note: str = ""


def _shape(extractor: Extractor, engines: tuple[str, ...]) -> dict[str, Any]:
    """What the answer depends on besides the machine, torch and threads (kernel_choice.choice_key adds those)."""
    loaded = extractor.loaded
    config = getattr(loaded.model, "config", None)
    shape: dict[str, Any] = {
        "model_type": loaded.model_type,
        "layers": loaded.n_layers,
        "width": loaded.hidden_size,
        "heads": getattr(config, "num_attention_heads", None),
        "batch_tokens": extractor.batch_tokens,
    }
    if any(engine.startswith("openvino") for engine in engines):
        import openvino as ov

        shape["openvino"] = ov.__version__
    return shape


def _rate_text(rates: dict[str, float]) -> str:
    fastest_first = sorted(rates.items(), key=lambda item: -float(item[1]))
    return ", ".join(f"{engine} {float(rate):,.0f}" for engine, rate in fastest_first) + " tokens/s"


def choose(extractor: Extractor, backend: str, engines: tuple[str, ...], job_tokens: int | None) -> Choice:
    """The engine ``extractor`` runs ``backend`` on: cached, measured (big jobs), or the first candidate."""
    kind = CHOOSING[backend]
    key, covers = kernel_choice.choice_key(_shape(extractor, engines), kind, engines)
    where = kernel_choice.cache_dir() / kernel_choice.CACHE_FILE
    cached = kernel_choice.lookup(key, kind)
    big = job_tokens is not None and job_tokens >= MEASURE_AFTER_TOKENS
    if cached is not None and cached in engines:
        if cached != engines[0] and not big and not extractor.export_ready(cached):
            return Choice(
                engines[0],
                f"{engines[0]} (backend {backend}: {cached} measured faster here, but this model's export is not "
                f"built yet and a job of ~{job_tokens or 0:,} tokens does not repay building it)",
            )
        stored = (kernel_choice.entry(key) or {}).get("measured")
        figures = f": {_rate_text(stored)}" if isinstance(stored, dict) and stored else ""
        return Choice(cached, f"{cached} (backend {backend}: measured earlier on this machine{figures}; {where})")
    if not big:
        return Choice(
            engines[0],
            f"{engines[0]} (backend {backend}: not measured yet on this machine; a job of ~{job_tokens or 0:,} "
            f"tokens does not repay measuring {', '.join(engines)}; an embed of >= {MEASURE_AFTER_TOKENS:,} does)",
        )
    rates = measure(extractor, engines)
    best = max(rates, key=lambda engine: rates[engine] / (1.0 if engine == engines[0] else MARGIN))
    kernel_choice.remember(key, covers, best, kind, rates)
    return Choice(best, f"{best} (backend {backend}: measured {_rate_text(rates)}; cached in {where})")


def sample_windows(extractor: Extractor) -> list[list[int]]:
    """Token windows to time: MEASURE_TOKENS of them in rows of SAMPLE_LENGTHS, fixed pseudo-random ids."""
    generator = torch.Generator().manual_seed(0)  # its own: measuring must not move the caller's RNG state
    longest = max(2, extractor.max_length)
    windows: list[list[int]] = []
    total = 0
    while total < MEASURE_TOKENS:
        for length in SAMPLE_LENGTHS:
            n = min(length, longest)
            windows.append(torch.randint(0, extractor.vocab_size, (n,), generator=generator).tolist())
            total += n
    return windows


def measure(extractor: Extractor, engines: tuple[str, ...]) -> dict[str, float]:
    """Tokens/s of each engine that works, timed on the extractor's own batches of ``sample_windows``.

    Runtime engines are made ready first: they export the model as loaded, before the torch engines convert it
    (bf16 linears) or pack it (oneDNN). An engine that fails to get ready is left out with a warning.
    """
    windows = sample_windows(extractor)
    batches = [[windows[i] for i in batch] for batch in plan_batches([len(w) for w in windows], extractor.batch_tokens)]
    tokens = sum(len(w) for w in windows)
    ready: list[str] = []
    for engine in sorted(engines, key=lambda e: e.startswith("torch")):
        try:
            extractor.use_engine(engine, measuring=True)
            extractor.run_batch(batches[0])  # warm-up: first-call compilation and allocation
        except Exception as exc:  # noqa: BLE001  (a runtime's own errors: it is then not a candidate)
            if engine == engines[0]:
                raise
            log.warning("could not run %s here (%s: %s); not using it", engine, type(exc).__name__, exc)
            continue
        ready.append(engine)
    best = dict.fromkeys(ready, float("inf"))
    for _ in range(ROUNDS):
        for engine in ready:
            extractor.use_engine(engine)
            start = time.perf_counter()
            for batch in batches:
                extractor.run_batch(batch)
            best[engine] = min(best[engine], time.perf_counter() - start)
    return {engine: tokens / max(seconds, 1e-9) for engine, seconds in best.items()}


__all__ = [
    "ENGINES",
    "MEASURE_AFTER_TOKENS",
    "Choice",
    "candidates",
    "choose",
    "estimate_tokens",
    "measure",
    "recorded",
    "sample_windows",
]
