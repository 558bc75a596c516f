"""Backends that run the model in a CPU inference runtime embedkit drives (#21): OpenVINO fp32, ONNX Runtime int8.

The model is exported once per model, layer set, pooling and runtime version (onnx_export.py) to a graph whose
outputs are the pooled vectors themselves; embedkit keeps everything else: its length-sorted token-budget batches,
long-text windows, status rows and metadata, so ``--backend openvino`` changes only who multiplies the matrices.

- ``openvino``: the export compiled by OpenVINO's CPU plugin at fp32 inference precision (exact: cosine to the
  torch backend >= 0.99999).
- ``ort-int8``: the export quantised by ONNX Runtime's dynamic quantisation (int8 weights, one scale per tensor,
  activations quantised per batch), run by ONNX Runtime with all graph optimisations. Approximate, like
  ``int8``: a text's vector moves slightly with its batch mates.
- ``openvino-bf16`` (an engine of backend ``bf16``, not a backend of its own; backend_choice.py picks it where it
  measures faster than torch's bf16 linear layers): the same export compiled at bf16 inference precision, for CPUs
  with native bf16. It shares the fp32 export's cache entry: the precision is a compile-time setting.

A runtime's package is an optional extra (``pip install 'embedkit[openvino]'`` or ``'embedkit[onnx]'``); a missing
one is a ConfigError when the backend is chosen, and the default backend never imports either. Before a loaded
graph is used its vectors are compared with torch's on a probe batch: a disagreeing cache entry (a corrupt file,
a runtime bug) is rebuilt once, then refused with ModelLoadError.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..artefact import Staging
from ..errors import ConfigError, ModelLoadError
from .onnx_export import PooledLayers, cached_export, export_dir, probe_inputs

log = logging.getLogger(__name__)

# backend -> (packages it imports, the pip extra that installs them)
RUNTIME_BACKENDS: dict[str, tuple[tuple[str, ...], str]] = {
    "openvino": (("openvino", "onnx"), "openvino"),  # onnx: torch's ONNX exporter writes the model through it
    "ort-int8": (("onnxruntime", "onnx"), "onnx"),
}
# The engines that run a runtime graph: engine -> the backend whose runtime package it needs.
RUNTIME_ENGINES = {"openvino": "openvino", "openvino-bf16": "openvino", "ort-int8": "ort-int8"}
# Minimum cosine, per row and pair, between the runtime's and torch's (fp32) vectors on the probe batch. bf16's
# bar is the bf16 backend's own (0.9999 on GPT-2 small) less a margin for the tiny random models of the tests.
PROBE_MIN_COSINE = {"openvino": 0.9999, "openvino-bf16": 0.999, "ort-int8": 0.99}


def require(backend: str) -> None:
    """ConfigError naming the extra to install when ``backend``'s runtime package is missing."""
    packages, extra = RUNTIME_BACKENDS[backend]
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"backend {backend!r} needs {' and '.join(missing)}, which is not installed: "
            f"pip install 'embedkit[{extra}]' (or use --backend torch)"
        )


Forward = Callable[[np.ndarray, np.ndarray], list[np.ndarray]]


def _openvino(directory: Path, threads: int, precision: str = "f32") -> tuple[Forward, dict[str, str]]:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        str(directory / "model.onnx"),
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": precision,
            "INFERENCE_NUM_THREADS": str(threads),
            "PERFORMANCE_HINT": "LATENCY",
        },
    )
    request = compiled.create_infer_request()
    lock = threading.Lock()  # one infer request: its output buffers are reused by the next call

    def forward(ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
        with lock:
            result = request.infer({"input_ids": ids, "attention_mask": mask})
            return [np.array(result[out], dtype=np.float32) for out in compiled.outputs]

    return forward, {}


def _openvino_bf16(directory: Path, threads: int) -> tuple[Forward, dict[str, str]]:
    return _openvino(directory, threads, "bf16")


def _ort_quantise(onnx_path: Path, stage: Staging) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # One scale per weight tensor: per-channel scales measured worse here (GPT-2 small min cosine 0.9988 vs 0.9992;
    # tiny GPT-2 0.984 vs 0.9999), as the quantiser takes the channel axis of GPT-2's transposed Gemm weights.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs advice on the root logger at WARNING/INFO
    try:
        quantize_dynamic(str(onnx_path), str(stage.path("model-int8.onnx")), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    onnx_path.unlink()  # only the int8 graph is run; the fp32 one would double the entry's size


def _ort_int8(directory: Path, threads: int) -> tuple[Forward, dict[str, str]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(directory / "model-int8.onnx"), options, providers=["CPUExecutionProvider"])

    def forward(ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(v, dtype=np.float32) for v in session.run(None, {"input_ids": ids, "attention_mask": mask})]

    return forward, {}


def runtime_identity(backend: str) -> dict[str, str]:
    """What the export key records of the runtime: its name, version and how the graph is turned into its model.

    OpenVINO's precision is not part of it: fp32 and bf16 compile the same file (INFERENCE_PRECISION_HINT).
    """
    if RUNTIME_ENGINES.get(backend, backend) == "openvino":
        import openvino as ov

        return {"name": "openvino", "version": ov.__version__}
    import onnxruntime as ort

    return {"name": "onnxruntime", "version": ort.__version__, "quantisation": "dynamic, QInt8 weights per tensor"}


def _min_cosine(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    worst = 1.0
    for a, b in zip(got, want):
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
        worst = min(worst, float(cos.min()))
    return worst


_LOADERS: dict[str, Callable[[Path, int], tuple[Forward, dict[str, str]]]] = {
    "openvino": _openvino,
    "openvino-bf16": _openvino_bf16,
    "ort-int8": _ort_int8,
}


class Runner:
    """One loaded runtime graph for a model and its (layer, pooling) pairs: ``runner(ids, mask)`` -> pooled vectors.

    ``backend`` is an engine of RUNTIME_ENGINES (a runtime backend's own name, or ``openvino-bf16``).
    """

    def __init__(self, backend: str, graph: PooledLayers, threads: int):
        require(RUNTIME_ENGINES[backend])
        self.backend = backend
        load = _LOADERS[backend]
        finish = _ort_quantise if backend == "ort-int8" else None
        runtime = runtime_identity(backend)
        ids, mask = probe_inputs()
        with torch.inference_mode():
            want = [v.float().numpy() for v in graph(ids, mask)]
        for attempt in (1, 2):
            directory = cached_export(graph, runtime, finish)
            try:
                forward, _ = load(directory, threads)
                cosine = _min_cosine(forward(ids.numpy(), mask.numpy()), want)
            except Exception as exc:  # noqa: BLE001  (a runtime's own errors for a file it cannot load)
                cosine, problem = float("nan"), f"could not be loaded ({type(exc).__name__}: {exc})"
            else:
                problem = f"gives vectors at cosine {cosine:.6f} to torch's (want >= {PROBE_MIN_COSINE[backend]})"
            if cosine >= PROBE_MIN_COSINE[backend]:
                self.forward, self.directory = forward, directory
                return
            log.warning(
                "the %s export in %s %s; %s", backend, directory, problem, "rebuilding it" if attempt == 1 else ""
            )
            shutil.rmtree(directory, ignore_errors=True)
        raise ModelLoadError(f"backend {backend!r}: the exported model {problem}; use --backend torch")

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
        return self.forward(ids, mask)


# Runners kept beside the model (as backends._kernels): a copy of an Extractor with another model starts over.
_runners: weakref.WeakKeyDictionary[nn.Module, dict[tuple, Runner]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def runner_for(
    model: nn.Module,
    blocks: nn.ModuleList,
    backend: str,
    pairs: tuple[tuple[int, str], ...],
    extra: dict[str, Any],
    *,
    threads: int,
) -> Runner:
    """The runner of ``model`` for ``pairs`` on ``backend`` with ``threads`` CPU threads: built (exported, or read
    from the cache) on first use, then kept as long as the model."""
    key = (backend, pairs, threads)
    with _lock:
        runners = _runners.setdefault(model, {})
        if key not in runners:
            runners[key] = Runner(backend, PooledLayers(model, blocks, pairs, **extra), threads)
        return runners[key]


def export_ready(
    model: nn.Module, blocks: nn.ModuleList, engine: str, pairs: tuple[tuple[int, str], ...], extra: dict[str, Any]
) -> bool:
    """Whether ``engine`` can run ``model`` without exporting it first: a runner exists, or a cache entry does.

    A cheap look (the entry's files are checked when it is loaded), for jobs too small to repay an export.
    """
    with _lock:
        if any(key[0] == engine and key[1] == pairs for key in _runners.get(model, {})):
            return True
    try:
        return export_dir(PooledLayers(model, blocks, pairs, **extra), runtime_identity(engine)).is_dir()
    except Exception as exc:  # noqa: BLE001  (a runtime that cannot even say its version: not ready)
        log.debug("no %s export ready: %s", engine, exc)
        return False


def forget(model: nn.Module) -> None:
    """Drop the runners built for ``model`` (a compiled graph holds a copy of the weights)."""
    with _lock:
        _runners.pop(model, None)


__all__ = [
    "PROBE_MIN_COSINE",
    "RUNTIME_BACKENDS",
    "RUNTIME_ENGINES",
    "Runner",
    "export_ready",
    "forget",
    "require",
    "runner_for",
    "runtime_identity",
]
