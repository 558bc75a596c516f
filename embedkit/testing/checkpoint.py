"""Write a local checkpoint shaped exactly like ``openai-community/gpt2``, with the real GPT-2 tokenizer.

Where the model hub is out of reach (CI, air-gapped machines) the published weights cannot be downloaded. This
writes the same architecture (12 blocks, 768 wide, 12 heads, 1,024 positions, 50,257-token vocabulary,
``gelu_new``) with seeded random weights, plus GPT-2's own byte-level BPE files shipped with embedkit. Compute per
token and memory are those of the published model, so it is the right model for speed, memory and scale
measurements; its vectors carry no meaning, so it is the wrong model for quality measurements.

    python -m embedkit.testing.checkpoint OUT_DIR [--layers 12] [--width 768] [--heads 12] [--seed 0]

Small ``--layers`` / ``--width`` give a fast model of the same family with the real tokenizer.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

TOKENIZER_DIR = Path(__file__).resolve().parent / "gpt2_tokenizer"
GPT2_VOCAB = 50257
EOS_ID = 50256


def write_checkpoint(
    out_dir: str | Path, *, layers: int = 12, width: int = 768, heads: int = 12, seed: int = 0
) -> Path:
    """Write the checkpoint into ``out_dir`` (created if needed) and return its path."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    if width % heads:
        raise ValueError(f"--width {width} must be a multiple of --heads {heads}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(TOKENIZER_DIR / name, out / name)
    tokenizer = AutoTokenizer.from_pretrained(out, tokenizer_type="gpt2", model_max_length=1024)
    if len(tokenizer) != GPT2_VOCAB:
        raise RuntimeError(f"the shipped tokenizer has {len(tokenizer)} tokens, not {GPT2_VOCAB}")
    config = GPT2Config(
        vocab_size=GPT2_VOCAB,
        n_positions=1024,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        activation_function="gelu_new",
        bos_token_id=EOS_ID,
        eos_token_id=EOS_ID,
        layer_norm_epsilon=1e-5,
    )
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).eval().save_pretrained(out)
    # The fast tokenizer's save also writes tokenizer.json (built here from the shipped BPE files rather than
    # shipping its 3.5 MB), so the checkpoint loads its tokenizer the way the published model does (#23).
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m embedkit.testing.checkpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = write_checkpoint(args.out_dir, layers=args.layers, width=args.width, heads=args.heads, seed=args.seed)
    print(
        f"wrote {out}: GPT-2 shape, {args.layers} layers, width {args.width}, seeded random weights (seed {args.seed})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
