"""Property-based tests: pooling on random masks, batching/order independence, readers on random inputs."""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from conftest import WORDS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedkit.config import POOLING_MODES
from embedkit.extract.pooling import pool
from embedkit.sources import Source

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def naive_pool(h: np.ndarray, m: np.ndarray, mode: str) -> np.ndarray:
    """Pooling of one row, written the slow obvious way."""
    real = [t for t in range(len(m)) if m[t]]
    if mode == "mean":
        return h[real].mean(0)
    if mode == "max":
        return h[real].max(0)
    if mode == "first":
        return h[real[0]]
    if mode == "last":
        return h[real[-1]]
    w = np.array([t + 1 for t in real], dtype=np.float64)
    return (h[real] * w[:, None]).sum(0) / w.sum()


@st.composite
def hidden_and_mask(draw):
    batch, tokens, dim = draw(st.integers(1, 4)), draw(st.integers(1, 9)), draw(st.integers(1, 5))
    h = np.array(
        draw(st.lists(st.floats(-100, 100, width=32), min_size=batch * tokens * dim, max_size=batch * tokens * dim)),
        dtype=np.float32,
    )
    rows = [draw(st.lists(st.booleans(), min_size=tokens, max_size=tokens).filter(any)) for _ in range(batch)]
    return h.reshape(batch, tokens, dim), np.array(rows, dtype=np.int64)


@SETTINGS
@given(hidden_and_mask(), st.sampled_from(POOLING_MODES))
def test_pooling_on_random_masks_matches_the_naive_definition(data, mode):
    h, m = data
    got = pool(torch.from_numpy(h), torch.from_numpy(m), mode).numpy()
    want = np.stack([naive_pool(h[b].astype(np.float64), m[b], mode) for b in range(len(h))])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


texts_strategy = st.lists(
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=50).map(" ".join), min_size=1, max_size=12
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts_strategy, st.integers(1, 600), st.randoms(use_true_random=False))
def test_vectors_do_not_depend_on_batching_or_order(extractor_factory, texts, batch_tokens, rng):
    ex = extractor_factory(pooling=("mean", "last"), layers=(1, -1))
    alone = {c: np.stack([ex.embed([t])[c][0] for t in texts]) for c in ex.columns}
    order = list(range(len(texts)))
    rng.shuffle(order)
    saved = ex.batch_tokens
    ex.batch_tokens = batch_tokens
    try:
        batched = ex.embed([texts[i] for i in order])
    finally:
        ex.batch_tokens = saved
    for c in ex.columns:
        np.testing.assert_allclose(batched[c], alone[c][order], atol=1e-5, rtol=0)


# Any text a file can hold: everything but surrogates, which UTF-8 cannot encode.
cell = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@SETTINGS
@given(
    st.lists(st.tuples(cell, st.integers(-5, 5)), min_size=1, max_size=30),
    st.sampled_from(["csv", "tsv", "jsonl", "parquet"]),
    st.integers(1, 7),
)
def test_readers_return_exactly_what_was_written(rows, fmt, batch_rows):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data.{fmt}"
        if fmt in ("csv", "tsv"):
            with path.open("w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f, delimiter="," if fmt == "csv" else "\t")
                writer.writerow(["text", "n"])
                writer.writerows(rows)
        elif fmt == "jsonl":
            path.write_text("".join(json.dumps({"text": t, "n": n}) + "\n" for t, n in rows), encoding="utf-8")
        else:
            pq.write_table(pa.table({"text": [t for t, _ in rows], "n": [n for _, n in rows]}), path)
        got_texts, got_keep, got_rows = [], [], []
        for records in Source(path, keep=["n"]).batches(batch_rows):
            got_texts += records.texts
            keep = records.keep["n"]
            got_keep += keep.to_pylist() if isinstance(keep, pa.Array) else keep
            got_rows += records.row_numbers
    assert got_texts == [t for t, _ in rows]
    assert got_rows == list(range(len(rows)))
    assert got_keep == ([str(n) for _, n in rows] if fmt in ("csv", "tsv") else [n for _, n in rows])
