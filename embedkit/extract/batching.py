"""Tokenising into model-sized windows and planning length-sorted, token-budget batches."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpecialTokens:
    """The special tokens a tokenizer puts around every text (GPT-2: none; BERT: [CLS] ... [SEP])."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]

    @classmethod
    def of(cls, tokenizer) -> "SpecialTokens":
        # transformers v5 tokenizers no longer expose build_inputs_with_special_tokens, so read the template
        # off one encoding with and one without special tokens.
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a", add_special_tokens=True)["input_ids"]
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return cls(tuple(full[:start]), tuple(full[start + len(plain) :]))
        return cls((), ())

    def __len__(self) -> int:
        return len(self.prefix) + len(self.suffix)

    def wrap(self, ids: list[int]) -> list[int]:
        return [*self.prefix, *ids, *self.suffix]


def split_windows(
    content: list[int], specials: SpecialTokens, max_length: int, stride: int, chunk: bool
) -> tuple[list[list[int]], bool]:
    """Cut one text's content tokens into windows of at most ``max_length`` tokens (specials included).

    Returns the windows and whether tokens were dropped (truncate mode only). In chunk mode consecutive
    windows share ``stride`` tokens, so no token loses all its left context at a window edge.
    """
    budget = max_length - len(specials)
    if len(content) <= budget:
        return [specials.wrap(content)], False
    if not chunk:
        return [specials.wrap(content[:budget])], True
    step = budget - stride
    windows = []
    for start in range(0, len(content), step):
        windows.append(specials.wrap(content[start : start + budget]))
        if start + budget >= len(content):
            break
    return windows, False


def plan_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Group item indices into batches whose padded size (rows x longest) stays within ``batch_tokens``.

    Items are sorted longest first so padding is minimal and an out-of-memory shows at the first batch,
    not hours in. An item longer than the budget runs alone. Callers restore input order by index.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * longest > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
