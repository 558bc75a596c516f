"""The ``bf16`` backend (#21): bfloat16 matrix products on CPUs that run them natively, fp32 everywhere else.

CPUs with ``avx512_bf16`` (Cooper Lake, Zen 4+) or ``amx_bf16`` (Sapphire Rapids+) multiply bf16 matrices at
two to sixteen times their fp32 rate, and bf16 halves the bytes of weight read per token. Only the linear layers
(nearly all of a forward pass's arithmetic at GPT-2's widths) run in bf16; their weights are cast once at load,
their outputs come back as float32, and the residual stream, layer norms, softmax and pooling stay float32.
Keeping the residual stream in fp32 is what holds the vectors near fp32's (min cosine 0.9999+, the issue's bar):
casting the whole model to bf16 (``cast="model"``) rounds every residual addition to 8 bits of mantissa, twelve
blocks in a row. torch's CPU autocast does what ``"linears"`` does but re-casts every weight on every forward
call (its weight cache only serves tensors that require grad), so it is not offered.

On a CPU without native bf16, torch still runs bf16 products, emulated and slower than fp32: the backend then
says so and runs the fp32 path. The vectors stay within bf16's tolerance of fp32 either way, so the backend name
recorded in metadata makes later stages re-embed queries with the same setting on any machine.
On CUDA the extractor already runs under bf16/fp16 autocast (extractor.py), so there is nothing to convert.
Where OpenVINO is installed, the bf16 backend may instead run OpenVINO at bf16 inference precision: which of the two
runs is chosen by a cached measurement (backend_choice.py), and this module's conversion only when torch's wins.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

# /proc/cpuinfo flags that mean bf16 matrix products run in hardware (oneDNN picks its bf16 kernels by them).
NATIVE_FLAGS = ("avx512_bf16", "amx_bf16")
CASTS = ("linears", "model")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's instruction-set flags as Linux reports them (empty elsewhere: no native bf16 is assumed)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware."""
    return any(flag in cpu_flags() for flag in NATIVE_FLAGS)


def warn_not_native() -> None:
    """Say that backend bf16 runs the fp32 path on this CPU, and why."""
    log.warning(
        "backend 'bf16': this CPU has no native bfloat16 (no %s in /proc/cpuinfo), where bf16 would be slower "
        "than fp32; running the fp32 path instead (the vectors differ from bf16 ones by rounding only)",
        " or ".join(NATIVE_FLAGS),
    )


class BF16Linear(nn.Module):
    """A linear layer whose product runs in bfloat16 (weights cast once) and whose output is the input's dtype.

    Built from an ``nn.Linear`` or a GPT-2 ``Conv1D`` (weight [in, out]).
    """

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: Any):  # Any: nn.Linear or transformers' Conv1D (as in backends.py)
        super().__init__()
        weight = linear.weight.detach()
        if type(linear).__name__ == "Conv1D":  # transformers' transposed linear, matched by name (see backends.py)
            weight = weight.t()
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        self.register_buffer("weight", weight.to(torch.bfloat16).contiguous())
        bias = getattr(linear, "bias", None)
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)


def _convertible(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (
        (isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D")
        and isinstance(weight, torch.Tensor)
        and weight.dtype == torch.float32
    )


def bf16_linears(model: nn.Module) -> int:
    """Swap every fp32 linear layer (and GPT-2 ``Conv1D``) of ``model`` for a ``BF16Linear``; returns how many."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _convertible(child):
                setattr(parent, name, BF16Linear(child))
                swapped += 1
    return swapped


def to_bf16(model: nn.Module, device: torch.device, cast: str = "linears", force: bool = False) -> nn.Module:
    """The model to run for backend ``bf16``: converted on a native-bf16 CPU (or when ``force``d), else unchanged.

    ``cast``: ``"linears"`` (bf16 products, fp32 residual stream: the backend's choice) or ``"model"`` (every
    weight in bf16; kept for benchmarks/throughput.py, which measures both).
    """
    if cast not in CASTS:
        raise ValueError(f"cast must be one of {CASTS}, got {cast!r}")
    if device.type != "cpu":
        return model  # CUDA: the extractor's autocast already runs bf16 (or fp16) products
    if not (force or native_bf16()):
        warn_not_native()
        return model
    if cast == "model":
        return model.to(torch.bfloat16)
    log.debug("bf16 linear layers: %d", bf16_linears(model))
    return model
