"""Running a model only as deep as needed and catching the requested hidden states on the way.

Numbering follows ``output_hidden_states``: 0 = input of block 1 (token + position embeddings), i = output of
block i, ``n_layers`` = the model's final output (after GPT-2's ``ln_f``). Hooks catch exactly the requested
states, so the other layers are never kept (``output_hidden_states`` would hold all 13), and the forward pass
is stopped right after the deepest requested block: layer k costs about k/12 of GPT-2.
"""

from __future__ import annotations

import torch
from torch import nn


class _StopForward(Exception):
    """Raised inside a hook to leave the forward pass once every requested state is caught."""


def _hidden_of(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def run_to_layers(model: nn.Module, blocks: nn.ModuleList, layers: set[int], **inputs) -> dict[int, torch.Tensor]:
    """Run ``model(**inputs)`` and return ``{layer: hidden [batch, tokens, dim]}`` for ``layers``."""
    n_layers = len(blocks)
    deepest = max(layers)
    caught: dict[int, torch.Tensor] = {}
    handles = []

    def stop_if_done(layer: int) -> None:
        if layer == deepest and deepest < n_layers:
            raise _StopForward

    if 0 in layers:

        def catch_embeddings(_module, args, kwargs):
            caught[0] = args[0] if args else kwargs["hidden_states"]
            stop_if_done(0)

        handles.append(blocks[0].register_forward_pre_hook(catch_embeddings, with_kwargs=True))

    for layer in sorted(layer for layer in layers if 0 < layer < n_layers):

        def catch_block(_module, _args, output, layer=layer):
            caught[layer] = _hidden_of(output)
            stop_if_done(layer)

        handles.append(blocks[layer - 1].register_forward_hook(catch_block))
    try:
        out = model(**inputs)
        caught[n_layers] = out.last_hidden_state
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return caught
