"""Getting a loaded model ready to run fast: exact rewrites always, approximate ones only when asked.

Exact (every backend): GPT-2's ``gelu_new`` is written in transformers as six element-wise PyTorch ops, each a
full pass over the [tokens, 3072] MLP activations; on a 2-core CPU that costs a fifth of the forward pass.
``nn.GELU(approximate="tanh")`` is the same formula in one fused kernel (results differ by float rounding,
< 3e-7 per element), so it replaces those modules.

Approximate (``backend="int8"``, CPU only): the linear layers run as dynamic int8 (weights quantised once,
activations quantised on the fly per batch) via ``torch.ao.quantization.quantize_dynamic``. GPT-2
keeps its projections in ``Conv1D`` modules (a transposed ``nn.Linear``), which quantize_dynamic does not
know, so they are turned into ``nn.Linear`` first. The activation scale is per batch, so a text's int8 vector
moves slightly with the texts it is batched with (cosine > 0.999 between batchings); the exact backend does not.
"""

from __future__ import annotations

import logging
import warnings

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


def conv1d_to_linear(model: nn.Module) -> int:
    """Replace GPT-2 style ``Conv1D`` (weight [in, out]) with an equivalent ``nn.Linear``; returns how many."""
    replaced = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child).__name__ != "Conv1D":
                continue
            n_in, n_out = child.weight.shape
            linear = nn.Linear(n_in, n_out, bias=child.bias is not None)
            linear.weight = nn.Parameter(child.weight.detach().t().contiguous(), requires_grad=False)
            if child.bias is not None:
                linear.bias = nn.Parameter(child.bias.detach().clone(), requires_grad=False)
            setattr(parent, name, linear)
            replaced += 1
    return replaced


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
        model = quantize_int8(model)
    return model
