"""Getting a loaded model ready to run fast: exact rewrites always, approximate ones only when asked.

Exact (every backend): GPT-2's ``gelu_new`` is written in transformers as six element-wise PyTorch ops, each a
full pass over the [tokens, 3072] MLP activations; on a 2-core CPU that costs a fifth of the forward pass.
``nn.GELU(approximate="tanh")`` is the same formula in one fused kernel (results differ by float rounding,
< 3e-7 per element), so it replaces those modules.

Exact, on CPU: linear layers run through oneDNN with weights packed once for it, when that measures faster
than the default BLAS on this machine (``use_onednn_linears``). torch's fp32 ``addmm`` calls MKL, and MKL takes
its AVX2 path on AMD CPUs even where they have AVX-512; oneDNN picks its kernels by the instruction set alone.
On a 2-core AVX-512 EPYC this doubled the throughput of GPT-2-small (958 -> 1,864 tokens/s); the results are
fp32 like before and differ by accumulation order only (< 1e-5). Where oneDNN is not faster (or is missing, or
disagrees with the default path), nothing changes.

That choice is made late and remembered (``speed_up``, #23): the speed test's answer is cached per machine and
model shape (kernel_choice.py), and a model is packed only once it runs a job of ``PACK_AFTER_TOKENS`` tokens or
more, so a one-query ``search`` or ``predict`` pays neither the test nor the packing.

Approximate (``backend="int8"``, CPU only): the linear layers run as dynamic int8 (weights quantised once,
activations quantised on the fly per batch) via ``torch.ao.quantization.quantize_dynamic``. GPT-2
keeps its projections in ``Conv1D`` modules (a transposed ``nn.Linear``), which quantize_dynamic does not
know, so they are turned into ``nn.Linear`` first. The activation scale is per batch, so a text's int8 vector
moves slightly with the texts it is batched with (cosine > 0.999 between batchings); the exact backend does not.
"""

from __future__ import annotations

import logging
import time
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import BACKENDS
from ..errors import ConfigError, choice_error
from . import kernel_choice

log = logging.getLogger(__name__)

# Jobs (in tokens, the model's running total included) below this run the default kernels, unpacked. Packing
# GPT-2 small's 48 projections for oneDNN costs ~0.5 s of CPU (2-core dev machine), about what oneDNN saves on
# 1,000 tokens where it is fastest (2x): a one-query search never packs, a larger file packs before its
# first batch, a server packs once its requests add up to this many tokens.
PACK_AFTER_TOKENS = 1024
# Jobs of at most this many tokens (a search query, a short request) run on one CPU thread. Their matrix products
# are too small to split, and each of a forward pass's ~150 ops then waits for every thread of the pool: on the
# busy 2-core dev machine (load 17) an 8-token GPT-2-small forward took 3.4 s on 2 threads and 0.34 s on one;
# on an idle many-core machine one thread costs such a job a few tens of milliseconds at most.
ONE_THREAD_TOKENS = 32

# transformers' element-wise formulations of tanh-GELU, by class name (imported lazily, names are stable).
_SLOW_TANH_GELUS = ("NewGELUActivation", "GELUTanh", "PytorchGELUTanh", "FastGELUActivation")


def fuse_activations(model: nn.Module) -> int:
    """Swap multi-op tanh-GELU modules for the fused ``nn.GELU(approximate="tanh")``; returns how many."""
    swapped = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child).__name__ in _SLOW_TANH_GELUS:
                setattr(parent, name, nn.GELU(approximate="tanh"))
                swapped += 1
    return swapped


def _as_linear(conv1d: Any) -> nn.Linear:
    # Any: transformers' Conv1D, matched by class name (model code loaded from a hub repo may carry its own copy).
    n_in, n_out = conv1d.weight.shape
    # On the meta device: a CPU nn.Linear fills its weight with random numbers first, which cost ~0.7 s of CPU
    # for GPT-2 small's 48 projections, only to be replaced at once.
    linear = nn.Linear(n_in, n_out, bias=conv1d.bias is not None, device="meta")
    linear.weight = nn.Parameter(conv1d.weight.detach().t().contiguous(), requires_grad=False)
    if conv1d.bias is not None:
        linear.bias = nn.Parameter(conv1d.bias.detach().clone(), requires_grad=False)
    return linear


def conv1d_to_linear(model: nn.Module) -> int:
    """Replace GPT-2 style ``Conv1D`` (weight [in, out]) with an equivalent ``nn.Linear``; returns how many."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ == "Conv1D":
                setattr(parent, name, _as_linear(child))
                replaced += 1
    return replaced


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"


class OneDNNLinear(nn.Module):
    """``nn.Linear`` whose weight is packed once into oneDNN's blocked layout (what inductor does on CPU).

    Built from an ``nn.Linear`` or straight from a GPT-2 ``Conv1D`` (weight [in, out]), without an intermediate
    ``nn.Linear``.
    """

    def __init__(self, linear: Any):  # Any: nn.Linear or transformers' Conv1D (see _as_linear)
        super().__init__()
        weight = linear.weight.detach()
        if _is_conv1d(linear):
            weight = weight.t()
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None))
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def _onednn_usable() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        return bool(
            torch.backends.mkldnn.is_available()
            and ops is not None
            and hasattr(ops, "_linear_pointwise")
            and hasattr(ops, "_reorder_linear_weight")
        )
    except RuntimeError:  # an op namespace that was not built in
        return False


def _best_seconds(fn, x: torch.Tensor, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - start)
    return best


def onednn_is_faster(linear: nn.Linear, tokens: int = 512) -> bool:
    """Time one of the model's own linear layers both ways on a ``tokens``-row input; also check they agree."""
    if not _onednn_usable():
        return False
    try:
        packed = OneDNNLinear(linear)
        # Its own generator: this runs in the middle of a job, which must not move the caller's RNG state.
        x = torch.randn(1, tokens, linear.in_features, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            want, got = linear(x), packed(x)
            if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
                log.warning("oneDNN linear disagrees with the default path; not using it")
                return False
            return _best_seconds(packed, x) < 0.9 * _best_seconds(linear, x)
    except RuntimeError as exc:  # a torch build whose oneDNN ops refuse this shape or dtype
        log.debug("oneDNN linear unavailable: %s", exc)
        return False


def _packable(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (
        (isinstance(module, nn.Linear) or _is_conv1d(module))
        and isinstance(weight, torch.Tensor)
        and weight.dtype == torch.float32
        and weight.device.type == "cpu"
    )


def use_onednn_linears(model: nn.Module) -> int:
    """Run every fp32 ``nn.Linear`` (and GPT-2 ``Conv1D``) of ``model`` through oneDNN; returns how many."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _packable(child):
                setattr(parent, name, OneDNNLinear(child))
                swapped += 1
    return swapped


def model_shape(model: nn.Module, layer: nn.Linear) -> dict[str, Any]:
    """What the kernel choice depends on besides the machine: the architecture's size and the timed layer."""
    config = getattr(model, "config", None)
    fact = lambda name: getattr(config, name, None)  # noqa: E731  (a config may lack any of them)
    weight = layer.weight
    return {
        "model_type": str(fact("model_type")),
        "layers": fact("num_hidden_layers"),
        "width": fact("hidden_size"),
        "heads": fact("num_attention_heads"),
        "dtype": str(weight.dtype).removeprefix("torch."),
        "timed_layer": list(weight.shape),
    }


@dataclass
class _Kernels:
    tokens: int = 0  # tokens run so far (CPU, default kernels)
    settled: bool = False  # the choice was made (or there is none to make)


# Kept beside the model rather than on the Extractor: a copy of an Extractor with another model (the audit's
# random twin) starts over, and a model that is dropped takes its entry with it.
_kernels: weakref.WeakKeyDictionary[nn.Module, _Kernels] = weakref.WeakKeyDictionary()


def speed_up(model: nn.Module, device: torch.device, tokens: int) -> bool:
    """Call before running a job of ``tokens`` tokens: past PACK_AFTER_TOKENS in all, pick the CPU kernels and pack.

    The pick is the cached answer of ``onednn_is_faster`` (kernel_choice.py), measured on the first such job on a
    machine. Returns whether the model runs through oneDNN from now on.
    """
    state = _kernels.setdefault(model, _Kernels())
    if state.settled or device.type != "cpu":
        return False
    state.tokens += tokens
    if state.tokens < PACK_AFTER_TOKENS:
        return False
    state.settled = True
    return pick_kernels(model, device)


def pick_kernels(model: nn.Module, device: torch.device) -> bool:
    """Make the CPU kernel choice for ``model`` now (cached, kernel_choice.py) and pack it if oneDNN wins.

    ``speed_up`` calls this once a model's jobs add up to PACK_AFTER_TOKENS; backend_choice.py calls it before
    timing the torch engine, so that engine is timed as a large job would run it.
    """
    _kernels.setdefault(model, _Kernels()).settled = True
    if device.type != "cpu":
        return False
    first = next((m for m in model.modules() if _packable(m)), None)
    if first is None or not _onednn_usable():
        return False
    timed = _as_linear(first) if _is_conv1d(first) else first
    assert isinstance(timed, nn.Linear)
    choice = kernel_choice.cached_choice(
        model_shape(model, timed), lambda: "onednn" if onednn_is_faster(timed) else "default"
    )
    if choice != "onednn":
        return False
    log.debug("oneDNN linear layers: %d", use_onednn_linears(model))
    return True


def quantize_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 linear layers (CPU). The model's blocks stay where they were in the module tree."""
    conv1d_to_linear(model)
    # fbgemm/x86 kernels need AVX2; qnnpack is the portable fallback (ARM).
    engines = torch.backends.quantized.supported_engines
    for engine in ("x86", "fbgemm", "qnnpack"):
        if engine in engines:
            torch.backends.quantized.engine = engine
            break
    with warnings.catch_warnings():
        # torch announces that its quantized tensor types will move to torchao; they work in every torch this
        # package supports, and the warning would reach every CLI user. The int8 tests catch a removal.
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated", category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)


@contextmanager
def threads_for(device: torch.device, tokens: int) -> Iterator[None]:
    """Run a job of ``tokens`` tokens on one thread when it is tiny (ONE_THREAD_TOKENS); the count is put back."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or tokens > ONE_THREAD_TOKENS or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def prepare(model: nn.Module, backend: str, device: torch.device, engine: str | None = None) -> nn.Module:
    """Apply the exact speed-ups, then the conversion of the engine ``backend`` runs on; returns the model to run.

    ``engine`` [default: the backend's first candidate, backend_choice.candidates] is how the backend runs here:
    ``auto`` and ``bf16`` choose theirs by measurement (backend_choice.py) and are prepared as ``torch`` until then.
    The CPU kernel choice of the torch engine comes later, from ``speed_up``, once a job is large enough.
    """
    from .backend_choice import candidates

    if backend not in BACKENDS:
        raise choice_error("backend", backend, BACKENDS)
    fused = fuse_activations(model)
    log.debug("fused %d tanh-GELU activations", fused)
    engines = candidates(backend, device)
    if backend == "bf16" and engines == ("torch",) and device.type == "cpu":
        from .bf16 import warn_not_native

        warn_not_native()
    return convert(model, engine or engines[0], device)


def convert(model: nn.Module, engine: str, device: torch.device) -> nn.Module:
    """Turn a loaded (fused) model into what ``engine`` runs; returns it. Engines: backend_choice.ENGINES."""
    if engine == "int8":
        if device.type != "cpu":
            raise ConfigError("backend 'int8' runs on CPU only; use --device cpu, or backend 'torch' on CUDA")
        model = quantize_int8(model)
        _kernels[model] = _Kernels(settled=True)  # its linear layers are int8 kernels already
    # --- hook: backend "bf16" (#21), all of it in bf16.py; backend_choice.py picks this engine or OpenVINO's bf16
    if engine == "torch-bf16":
        from .bf16 import to_bf16

        model = to_bf16(model, device, force=True)
        _kernels[model] = _Kernels(settled=True)  # bf16 linears: nothing left to pack
    # --- hook: the runtime backends (#21), all of it in runtime_backends.py; the torch model stays as loaded (it is
    # exported on first use), so its linear layers must not be packed for oneDNN, which no exporter knows.
    from .runtime_backends import RUNTIME_ENGINES, require

    if engine in RUNTIME_ENGINES:
        if device.type != "cpu":
            backend = "bf16" if engine == "openvino-bf16" else engine
            raise ConfigError(f"backend {backend!r} runs on CPU only; use --device cpu, or backend 'torch' on CUDA")
        require(RUNTIME_ENGINES[engine])
        _kernels[model] = _Kernels(settled=True)
    return model
