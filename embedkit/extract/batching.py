"""Tokenising into model-sized windows and planning length-sorted, token-budget batches.

Bounded memory per row: a tokenizer given a whole 50 MB text builds every token, offset and byte mapping of it
at once (6.5 GB of RSS for GPT-2), though truncate mode uses only the first ``max_length`` tokens. So no text is
handed to the tokenizer whole when it is longer than :func:`piece_chars` characters (GPT-2: 262,144):
:func:`tokenize_prefix` tokenises it in pieces of at most that many characters and stops as soon as the row
has every token it can use (truncate: ``max_length``; chunk: :data:`MAX_CHUNK_WINDOWS` windows). The
characters after that are never tokenised and the row's status says it was ``cut``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# Chunk mode embeds at most this many windows of one text; the rest of the text is cut (status ``cut``). With
# GPT-2 that is 1,024 + 1,023 x 896 = 917,632 tokens, about 3.5 MB of English: a long book. It bounds a row's
# memory (its token ids, ~40 MB as Python ints) and its time (about 25 minutes of GPT-2 small on 2 CPU cores).
MAX_CHUNK_WINDOWS = 1024
# Texts up to this many characters are always tokenised whole, whatever max_length (e.g. 64 for a small BERT),
# so n_tokens stays exact for every ordinary text. A GPT-2 fast tokenizer needs about 130 bytes per character
# of its input (6.5 GB for a 48.5 MB text), so a piece costs at most ~35 MB.
MIN_PIECE_CHARS = 1 << 18


@dataclass(frozen=True)
class SpecialTokens:
    """The special tokens a tokenizer puts around every text (GPT-2: none; BERT: [CLS] ... [SEP])."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]

    @classmethod
    def of(cls, tokenizer) -> SpecialTokens:
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


def max_token_chars(tokenizer) -> int:
    """An upper bound on the characters of text one token stands for: the longest vocabulary entry.

    Vocabulary entries spell a token at least as long as the text it covers: byte-level BPE (GPT-2) writes one
    character per byte and a character takes at least one byte, SentencePiece writes the text itself, WordPiece
    adds ``##``. GPT-2's longest entry is 128 (64 characters of mis-decoded UTF-8). Tokenizers that map a whole
    unknown word to one token (BERT's ``[UNK]``, up to 100 characters) break the bound; :func:`tokenize_prefix`
    stays correct for them, it only needs more pieces.
    """
    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, NotImplementedError):
        vocab = {}
    return max((len(entry) for entry in vocab), default=0) or 128


def piece_chars(max_length: int, token_chars: int) -> int:
    """Characters one tokenizer call is given at most: ``max_length`` tokens of the longest kind, or more.

    Since no token covers more than ``token_chars`` characters, a piece this long holds at least ``max_length``
    tokens: in truncate mode one piece is all a row ever needs (GPT-2: 1,024 x 128 = 131,072 characters). Never
    less than :data:`MIN_PIECE_CHARS`, so that ordinary long texts are still tokenised whole and keep an exact
    ``n_tokens``; only texts past that are cut.
    """
    return max(max_length * token_chars, MIN_PIECE_CHARS)


def _piece_end(text: str, start: int, size: int) -> int:
    """Where the piece of ``text`` starting at ``start`` ends: at most ``size`` characters on, at a token seam.

    The start of a run of whitespace ends a word for every common pre-tokenizer (GPT-2's regex, BERT's whitespace
    split, SentencePiece's space-joined words), so pieces cut there tokenise exactly as the whole text does. A
    piece with no such point (one ``size``-character word) is cut at ``size``: only the tokens at that seam may
    differ from a whole-text tokenisation.
    """
    end = start + size
    if end >= len(text):
        return len(text)
    for i in range(end, start, -1):
        if text[i].isspace() and not text[i - 1].isspace():
            return i
    return end


def tokenize_prefix(tokenize: Callable[[str], list[int]], text: str, size: int, wanted: int) -> tuple[list[int], bool]:
    """Content tokens of the start of ``text``, tokenising at most ``size`` characters per call.

    Stops once at least ``wanted`` tokens exist or the text ends. Returns the tokens and whether characters were
    left unread (the text was cut: the tokens are then a prefix of the whole text's).
    """
    ids: list[int] = []
    start = 0
    while start < len(text) and len(ids) < wanted:
        end = _piece_end(text, start, size)
        ids.extend(tokenize(text[start:end]))
        start = end
    return ids, start < len(text)
