"""Compact vector storage (float16, int8, binary): written by embed, read back as float32 by every reader."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import sample_texts

from embedkit import vectors
from embedkit.config import ExtractConfig
from embedkit.embed import embed_file
from embedkit.errors import ConfigError, InputError
from embedkit.store import open_features


def test_part_array_and_decode_round_trip():
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(7, 20)).astype(np.float32)
    valid = np.array([True, True, False, True, True, True, True])
    for dtype in ("float32", "float16"):
        column = vectors.part_array(matrix, valid, dtype)
        assert column.null_count == 1 and column.type.list_size == 20
        np.testing.assert_allclose(vectors.decode(column.drop_null()), matrix[valid], rtol=1e-3, atol=1e-3)
    binary = vectors.part_array(matrix, valid, "binary")
    assert binary.type == pa.list_(pa.bool_(), 20) and binary.null_count == 1
    decoded = vectors.decode(binary.drop_null())
    np.testing.assert_array_equal(decoded > 0, matrix[valid] > 0)
    np.testing.assert_allclose(np.linalg.norm(decoded, axis=1), 1.0, rtol=1e-6)
    # A slice of the column (offset into the packed bits) decodes the same rows.
    np.testing.assert_array_equal(vectors.decode(binary.slice(3, 2)) > 0, matrix[3:5] > 0)


def test_int8_quantisation_uses_the_maximum_of_every_dimension():
    rng = np.random.default_rng(1)
    matrix = rng.normal(size=(100, 8)).astype(np.float32) * np.arange(1, 9)
    scale = vectors.int8_scale(vectors.finite_max_abs(matrix))
    q = vectors.quantize_int8(matrix, scale)
    assert q.dtype == np.int8 and np.abs(q).max(axis=0).tolist() == [127] * 8
    assert np.abs(q.astype(np.float32) * scale - matrix).max() <= scale.max() / 2 + 1e-6
    # inf clips, nan is 0, an all-zero dimension decodes to 0
    odd = np.array([[np.inf, np.nan, 0.0]], dtype=np.float32)
    s = vectors.int8_scale(vectors.finite_max_abs(odd))
    assert vectors.quantize_int8(odd, s).tolist() == [[127, 0, 0]]


def test_int8_column_without_its_scale_is_a_clear_input_error():
    column = pa.FixedSizeListArray.from_arrays(pa.array([1, 2, 3, 4], type=pa.int8()), 2)
    with pytest.raises(InputError, match="scale"):
        vectors.decode(column)
    with pytest.raises(InputError, match="scale"):
        vectors.decode(column, {"dtype": "int8", "scale": [1.0]})
    with pytest.raises(InputError, match="non-positive"):
        vectors.decode(column, {"dtype": "int8", "scale": [1.0, -1.0]})
    np.testing.assert_allclose(vectors.decode(column, {"scale": [0.5, 2.0]}), [[0.5, 4.0], [1.5, 8.0]])


def test_unknown_dtype_is_refused():
    with pytest.raises(ConfigError, match="int8, binary"):
        ExtractConfig(model="x", dtype="int4")


@pytest.fixture(scope="module")
def embedded(tiny_gpt2_shared, tmp_path_factory):
    """The same texts embedded in each storage dtype, in several parts (the int8 scale must span them all)."""
    tmp = tmp_path_factory.mktemp("dtypes")
    texts = sample_texts(50, seed=5)
    texts[7] = ""  # a bad row: its vector stays null in every encoding
    (tmp / "in.txt").write_text("\n".join(t or " " for t in texts) + "\n", encoding="utf-8")
    out = {}
    for dtype in vectors.VECTOR_DTYPES:
        out[dtype] = tmp / f"{dtype}.parquet"
        config = ExtractConfig(model=tiny_gpt2_shared, dtype=dtype)
        embed_file(tmp / "in.txt", out[dtype], config, device="cpu", progress=False, part_rows=16)
    return out


def test_embed_writes_each_dtype_and_reads_back_float32(embedded):
    reference, _, skipped = open_features(embedded["float32"]).load()
    assert skipped == 1
    value_types = {"float32": pa.float32(), "float16": pa.float16(), "int8": pa.int8(), "binary": pa.bool_()}
    for dtype, path in embedded.items():
        feats = open_features(path)
        assert feats.schema.field("embedding").type == pa.list_(value_types[dtype], reference.shape[1])
        matrix, table, skipped = feats.load()
        assert matrix.dtype == np.float32 and matrix.shape == reference.shape and skipped == 1
        cos = np.sum(matrix * reference, axis=1) / np.linalg.norm(matrix, axis=1) / np.linalg.norm(reference, axis=1)
        if dtype == "binary":
            np.testing.assert_array_equal(matrix > 0, reference > 0)
        else:
            assert cos.min() > 0.999, (dtype, cos.min())
        streamed = np.concatenate([m for m, _ in feats.iter_batches(batch_rows=8)])
        np.testing.assert_array_equal(streamed, matrix)


def test_int8_scale_is_the_maximum_over_all_parts(embedded):
    reference, _, _ = open_features(embedded["float32"]).load()
    feats = open_features(embedded["int8"])
    entry = feats.vector_encoding("embedding")
    assert entry is not None and entry["dtype"] == "int8"
    np.testing.assert_allclose(entry["scale"], np.abs(reference).max(axis=0) / 127, rtol=1e-6)
    raw = pq.read_table(embedded["int8"], columns=["embedding"]).column("embedding").drop_null()
    assert np.abs(raw.combine_chunks().flatten().to_numpy()).max() == 127


def test_float_array_keeps_nulls(embedded):
    column = pq.read_table(embedded["int8"]).column("embedding")
    as_float = vectors.float_array(column, open_features(embedded["int8"]).vector_encoding("embedding"))
    assert as_float.type == pa.list_(pa.float32(), column.type.list_size)
    assert as_float.null_count == 1 and not as_float.is_valid()[7].as_py()


def test_downstream_stages_accept_compact_vectors(embedded, tmp_path):
    from embedkit.dedup import dedup_file
    from embedkit.index import build_index

    for dtype in ("int8", "binary"):
        result = dedup_file(embedded[dtype], tmp_path / f"dedup-{dtype}.parquet", threshold=0.999)
        assert result.rows == 50 and result.no_embedding == 1
        report = build_index(embedded[dtype], tmp_path / f"index-{dtype}", progress=False)
        assert report.summary_lines()


def test_cli_vector_dtype_option(tiny_gpt2_shared, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from embedkit.cli import cli

    (tmp_path / "in.txt").write_text("one text\nanother text\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # relative paths, as typed; in this process (a fresh one re-imported torch)
    result = CliRunner().invoke(
        cli,
        ["embed", "in.txt", "-o", "out.parquet", "--model", tiny_gpt2_shared]
        + ["--vector-dtype", "binary", "--device", "cpu", "-q"],
    )
    assert result.exit_code == 0, result.output
    assert pq.read_schema(tmp_path / "out.parquet").field("embedding").type.value_type == pa.bool_()


def test_classifier_trains_and_predicts_on_int8_features(features_file, tmp_path):
    from embedkit.classify import predict_file, train

    path = features_file(n=60, dtype="int8")
    train(path, "label", tmp_path / "model", seed=1)
    predict_file(tmp_path / "model", path, tmp_path / "pred.parquet", progress=False)
    predictions = pq.read_table(tmp_path / "pred.parquet").column("prediction").to_pylist()
    assert len(predictions) == 60 and None not in predictions
