"""Mask-aware pooling of hidden states, and how window vectors of one long text are combined.

Every function takes ``hidden`` [batch, tokens, dim] and ``mask`` [batch, tokens] (1 = real token) and
returns [batch, dim] in float32. Padding never contributes, wherever it sits in the mask.
"""

from __future__ import annotations

import torch

from ..config import POOLING_MODES
from ..errors import choice_error


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return torch.arange(1, mask.shape[1] + 1, device=mask.device, dtype=torch.float32).expand_as(mask)


def mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def weighted_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # SGPT (Muennighoff 2022): in a causal model later tokens have seen more of the text, so position i
    # (1-based) weighs i. Padding gets weight 0.
    w = (_positions(mask) * mask.to(torch.float32)).unsqueeze(-1).to(hidden.dtype)
    return (hidden * w).sum(1) / w.sum(1).clamp(min=1e-9)


def last(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # The last real token is the only one that has attended to the whole text in a causal model.
    # argmax over position*mask finds it for any mask, not only right padding.
    idx = (_positions(mask) * mask.to(torch.float32)).argmax(1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]


def first(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    idx = mask.to(torch.float32).argmax(1)  # first real token
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]


def max_(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    fill = torch.finfo(hidden.dtype).min
    return hidden.masked_fill(~mask.bool().unsqueeze(-1), fill).max(1).values


POOLERS = {"mean": mean, "last": last, "max": max_, "first": first, "weighted-mean": weighted_mean}
assert tuple(POOLERS) == POOLING_MODES


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool ``hidden`` over real tokens with ``mode`` (one of ``POOLING_MODES``); float32 result."""
    try:
        fn = POOLERS[mode]
    except KeyError:
        raise choice_error("pooling", mode, POOLING_MODES) from None
    return fn(hidden.float(), mask)


def combine_windows(vectors: torch.Tensor, n_tokens: torch.Tensor, mode: str) -> torch.Tensor:
    """Combine the pooled vectors [windows, dim] of one long text into one vector.

    Averages (mean, weighted-mean) combine as a token-weighted mean, so a text's mean equals the mean over
    all its window tokens. The others keep their meaning across windows: max stays an element-wise max,
    first is the first window's first token, last is the last window's last token.
    """
    if vectors.shape[0] == 1:
        return vectors[0]
    if mode == "max":
        return vectors.max(0).values
    if mode == "first":
        return vectors[0]
    if mode == "last":
        return vectors[-1]
    w = n_tokens.to(vectors.dtype).unsqueeze(-1)
    return (vectors * w).sum(0) / w.sum()
