"""Bounded memory per row: a text longer than the tokenizer's piece size is tokenised in pieces, only as far as
the long-text mode uses it, and the row says it was cut (status ``cut``) instead of the process using gigabytes."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import sample_texts

from embedkit.embed import embed_file
from embedkit.extract.batching import MAX_CHUNK_WINDOWS, MIN_PIECE_CHARS, max_token_chars, tokenize_prefix
from embedkit.summary import summary_text


class SpyTokenizer:
    """Delegates to the real tokenizer and records the length of every text it is given."""

    def __init__(self, tokenizer):
        self._tokenizer, self.lengths = tokenizer, []

    def __call__(self, text, *args, **kwargs):
        self.lengths += [len(t) for t in (text if isinstance(text, list) else [text])]
        return self._tokenizer(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


@pytest.fixture
def spied(extractor_factory, monkeypatch):
    def make(**config):
        extractor = extractor_factory(**config)
        spy = SpyTokenizer(extractor.loaded.tokenizer)
        monkeypatch.setattr(extractor.loaded, "tokenizer", spy)
        return extractor, spy

    return make


def _long_text(chars: int) -> str:
    words = " ".join(sample_texts(2000, seed=4))
    return (words * (chars // len(words) + 1))[:chars]


@pytest.mark.parametrize("mode, config", [("truncate", {}), ("chunk", {"max_length": 64, "stride": 8})])
def test_a_multi_megabyte_text_is_cut_kept_and_never_tokenised_whole(tmp_path, spied, mode, config):
    extractor, spy = spied(long_text=mode, **config)
    big = _long_text(3_000_000)
    path = tmp_path / "big.txt"
    path.write_text(f"short one\n{big}\nshort two\n", encoding="utf-8")
    out = tmp_path / "out.parquet"
    summary = embed_file(path, out, device="cpu", progress=False, extractor=extractor)
    rows = pq.read_table(out).to_pylist()
    assert summary.rows == 3 and [r["status"] for r in rows] == ["ok", "cut", "ok"]
    assert rows[1]["truncated"] and rows[1]["embedding"] is not None and "3,000,000 characters cut" in rows[1]["error"]
    assert max(spy.lengths) <= extractor.piece_chars < len(big) // 10
    assert sum(spy.lengths) < len(big) // 2  # most of the text never reached the tokenizer
    if mode == "chunk":
        assert rows[1]["n_windows"] == MAX_CHUNK_WINDOWS
    assert "3 rows" in summary_text(summary) and "1 truncated" in summary_text(summary)


def test_truncate_mode_vectors_do_not_change_when_the_text_is_cut(extractor_factory):
    extractor = extractor_factory()
    big = _long_text(1_000_000)
    head = big[: extractor.piece_chars]  # read whole: status ok; holds more than max_length tokens
    result = extractor.encode([big, head])
    assert result.status == ["cut", "ok"] and result.truncated.all()
    np.testing.assert_array_equal(result.vectors["embedding"][0], result.vectors["embedding"][1])


@pytest.mark.parametrize("size", [7, 40, 333])
def test_pieces_cut_at_whitespace_tokenise_like_the_whole_text(extractor_factory, size):
    tokenizer = extractor_factory().loaded.tokenizer
    text = "  ".join(sample_texts(30, seed=2)) + " \n\n tail\t\tend.  "

    def tokenize(piece):
        return tokenizer(piece, add_special_tokens=False)["input_ids"]

    ids, cut = tokenize_prefix(tokenize, text, size, wanted=10**9)
    assert not cut and ids == tokenize(text)
    some, cut = tokenize_prefix(tokenize, text, size, wanted=20)
    assert cut and 20 <= len(some) and some == ids[: len(some)]


def test_the_bound_holds_for_the_tiny_vocab_and_covers_a_piece(extractor_factory):
    extractor = extractor_factory()
    tokenizer = extractor.loaded.tokenizer
    longest = max_token_chars(tokenizer)
    # Every token decodes to at most `longest` characters, so a piece of piece_chars holds max_length tokens.
    assert all(len(tokenizer.decode([i])) <= longest for i in range(len(tokenizer)))
    assert extractor.piece_chars == max(extractor.config.max_length * longest, MIN_PIECE_CHARS)
    hardest = "".join(tokenizer.decode([i]) for i in range(len(tokenizer)) if len(tokenizer.decode([i])) == longest)
    size = extractor.config.max_length * longest
    piece = (hardest * (size // len(hardest) + 1))[:size]
    assert len(tokenizer(piece, add_special_tokens=False)["input_ids"]) >= extractor.config.max_length
