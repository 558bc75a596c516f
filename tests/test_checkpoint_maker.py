"""The project's own GPT-2-shaped checkpoint maker: real GPT-2 token ids, any width, loadable by embed."""

from __future__ import annotations

import numpy as np

from embedkit import ExtractConfig, Extractor
from embedkit.testing.checkpoint import main


def test_checkpoint_has_gpt2_tokenizer_and_embeds(tmp_path):
    out = tmp_path / "gpt2-mini"
    assert main([str(out), "--layers", "2", "--width", "32", "--heads", "2"]) == 0
    # Like the published openai-community/gpt2: the fast tokenizer's own file, not only the BPE files (#23).
    assert (out / "tokenizer.json").stat().st_size > 1_000_000
    extractor = Extractor(ExtractConfig(model=str(out), layers=(-1,)), device="cpu")
    assert extractor.loaded.tokenizer("Hello world")["input_ids"] == [15496, 995]  # the published GPT-2 ids
    assert len(extractor.loaded.tokenizer) == 50257 and extractor.loaded.tokenizer.pad_token is None
    vectors = extractor.embed(["Hello world", "A second, longer text."])
    assert vectors.shape == (2, 32) and np.isfinite(vectors).all()
