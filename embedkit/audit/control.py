"""The random-weights control: the same architecture and tokenizer as the audited model, with weights drawn at random.

Such a model knows no meaning, so any association it shows comes from surface form: how the tokenizer splits the
words and where their fixed random token vectors happen to lie. On the built-in tests a GPT-2-shaped random model
gave d ~ 1 on a names list whose two sides differed in BPE pieces per name (benchmarks/RESULTS.md); an audit
result is worth reading as learned bias only where it clearly exceeds its control.

The twin is built in memory from the loaded model's config (``AutoModel.from_config``, the architecture's own
initialisation, seeded), and shares the audited Extractor's tokenizer, settings and padding: only the weights
differ, so the one comparison isolates what training put into the vectors.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from ..errors import ModelLoadError

# Added to the user's seed before the draw. Seed 0 is what checkpoint makers use (embedkit.testing.checkpoint, the
# test suite's tiny models), and a twin drawn with it reproduced such a random checkpoint exactly: a "control"
# identical to the audited model.
SEED_OFFSET = 1_000_003


def random_twin(extractor, seed: int = 0):
    """An Extractor like ``extractor`` whose model has the same architecture with seeded random weights.

    The global torch RNG is left as it was (the draw happens inside ``torch.random.fork_rng``).
    """
    from transformers import AutoModel

    from ..extract.backends import prepare
    from ..extract.model import find_blocks

    loaded = extractor.loaded
    # prepare() times a few random matrix products when it picks CPU kernels: it draws from the RNG too.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED_OFFSET + seed)
        try:
            model = AutoModel.from_config(loaded.model.config, trust_remote_code=extractor.config.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"could not build a random-weights copy of {loaded.name!r}: {exc}") from exc
        model = model.to(torch.float32).eval().requires_grad_(False).to(loaded.device)
        # The engine the extractor runs on (auto and bf16 chose theirs by measurement), not the backend's first
        # candidate: a twin of an OpenVINO-bf16 extractor must export the plain model, not torch's bf16 linears.
        model = prepare(model, extractor.config.backend, loaded.device, getattr(extractor, "engine", None))
    twin = copy.copy(extractor)  # shares tokenizer, config, padding and batching; only the model is replaced
    twin.loaded = dataclasses.replace(
        loaded,
        model=model,
        blocks=find_blocks(model, loaded.n_layers),
        name=f"{loaded.name} (random weights, seed {SEED_OFFSET + seed})",
    )
    return twin


__all__ = ["SEED_OFFSET", "random_twin"]
