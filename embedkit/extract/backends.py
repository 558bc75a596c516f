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
from typing import Any

import torch
from torch import nn

from ..config import BACKENDS
from ..errors import ConfigError, choice_error

log = logging.getLogger(__name__)

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
    linear = nn.Linear(n_in, n_out, bias=conv1d.bias is not None)
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


class OneDNNLinear(nn.Module):
    """``nn.Linear`` whose weight is packed once into oneDNN's blocked layout (what inductor does on CPU)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

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
        x = torch.randn(1, tokens, linear.in_features)
        with torch.inference_mode():
            want, got = linear(x), packed(x)
            if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
                log.warning("oneDNN linear disagrees with the default path; not using it")
                return False
            return _best_seconds(packed, x) < 0.9 * _best_seconds(linear, x)
    except RuntimeError as exc:  # a torch build whose oneDNN ops refuse this shape or dtype
        log.debug("oneDNN linear unavailable: %s", exc)
        return False


def use_onednn_linears(model: nn.Module) -> int:
    """Run every fp32 ``nn.Linear`` of ``model`` (GPT-2's Conv1D first turned into one) through oneDNN."""
    conv1d_to_linear(model)
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (
                isinstance(child, nn.Linear)
                and child.weight.dtype == torch.float32
                and child.weight.device.type == "cpu"
            ):
                setattr(parent, name, OneDNNLinear(child))
                swapped += 1
    return swapped


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


def prepare(model: nn.Module, backend: str, device: torch.device) -> nn.Module:
    """Apply the exact speed-ups, then the backend's own conversion; returns the model to run."""
    if backend not in BACKENDS:
        raise choice_error("backend", backend, BACKENDS)
    fused = fuse_activations(model)
    log.debug("fused %d tanh-GELU activations", fused)
    if backend == "int8":
        if device.type != "cpu":
            raise ConfigError("backend 'int8' runs on CPU only; use --device cpu, or backend 'torch' on CUDA")
        return quantize_int8(model)
    if device.type == "cpu":
        first = next((m for m in model.modules() if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"), None)
        if first is not None and type(first).__name__ == "Conv1D":
            first = _as_linear(first)
        if isinstance(first, nn.Linear) and onednn_is_faster(first):
            log.debug("oneDNN linear layers: %d", use_onednn_linears(model))
    return model
