"""`embedkit embed` / `embedkit info` end to end: the Parquet contract, passthrough, metadata, exit codes."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import sample_texts

from embedkit import ExtractConfig, Extractor
from embedkit.cli import cli
from embedkit.store import open_features


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture
def reviews(write_csv):
    texts = sample_texts(12, seed=5)
    rows = [{"review_id": f"rev-{i}", "body": t, "stars": str(i % 5 + 1), "other": "x"} for i, t in enumerate(texts)]
    rows[3]["body"] = ""
    return write_csv(rows, "reviews.csv"), rows


def test_embed_writes_the_parquet_contract(reviews, tiny_gpt2_shared, tmp_path):
    path, rows = reviews
    out = tmp_path / "reviews.parquet"
    result = run(
        "embed",
        path,
        "-o",
        out,
        "--model",
        tiny_gpt2_shared,
        "--text-column",
        "body",
        "--id-column",
        "review_id",
        "--keep",
        "stars",
        "--layer",
        "1",
        "--layer",
        "-1",
        "--pooling",
        "mean",
        "--pooling",
        "last",
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert "12 rows" in result.output and "11 embedded" in result.output and "1 empty" in result.output
    table = pq.read_table(out)
    assert table.column_names == [
        "id",
        "body",  # the text column, kept by default
        "stars",
        "n_tokens",
        "n_windows",
        "truncated",
        "status",
        "error",
        "embedding_l1_mean",
        "embedding_l1_last",
        "embedding_l2_mean",
        "embedding_l2_last",
    ]
    assert table.column("id").to_pylist() == [r["review_id"] for r in rows]
    assert table.column("stars").to_pylist() == [r["stars"] for r in rows]
    assert table.column("body").to_pylist() == [r["body"] for r in rows]
    columns = json.loads(table.schema.metadata[b"embedkit"])["columns"]
    assert columns == {
        "text": "body",
        "id": "review_id",
        "keep": ["body", "stars"],
        "embeddings": ["embedding_l1_mean", "embedding_l1_last", "embedding_l2_mean", "embedding_l2_last"],
    }
    assert str(table.schema.field("n_tokens").type) == "int32"
    assert str(table.schema.field("embedding_l2_mean").type) == "fixed_size_list<element: float>[32]"
    assert table.column("status").to_pylist()[3] == "empty" and table.column("embedding_l2_mean")[3].as_py() is None

    features = open_features(out)
    assert features.config == ExtractConfig(
        model=tiny_gpt2_shared, layers=(1, 2), pooling=("mean", "last"), max_length=1024, stride=128
    )
    assert features.meta["model"]["hidden_size"] == 32 and features.meta["model"]["num_layers"] == 2
    assert {"embedkit", "torch", "transformers"} <= set(features.meta["versions"])

    # The stored vectors are the extractor's vectors for the same settings.
    ex = Extractor(features.config, device="cpu")
    texts = [r["body"] for r in rows if r["body"]]
    expected = ex.embed(texts)["embedding_l2_last"]
    stored = np.stack([v for v in table.column("embedding_l2_last").to_pylist() if v is not None])
    np.testing.assert_allclose(stored, expected, atol=1e-6)


def test_no_keep_text_drops_the_text_column(reviews, tiny_gpt2_shared, tmp_path):
    path, rows = reviews
    out = tmp_path / "bare.parquet"
    result = run("embed", path, "-o", out, "--model", tiny_gpt2_shared, "--text-column", "body", "--no-keep-text", "-q")
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column_names[:2] == ["id", "n_tokens"]
    columns = json.loads(table.schema.metadata[b"embedkit"])["columns"]
    assert columns["text"] == "body" and columns["keep"] == []


def test_default_id_is_the_row_number_and_float16_storage(reviews, tiny_gpt2_shared, tmp_path):
    path, _ = reviews
    out = tmp_path / "o.parquet"
    assert (
        run(
            "embed",
            path,
            "-o",
            out,
            "-m",
            tiny_gpt2_shared,
            "--text-column",
            "body",
            "--dtype",
            "float16",
            "--normalize",
            "-q",
        ).exit_code
        == 0
    )
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == list(range(12))
    assert str(table.schema.field("embedding").type) == "fixed_size_list<element: halffloat>[32]"
    vectors = np.stack(
        [np.asarray(v, dtype=np.float32) for v in table.column("embedding").to_pylist() if v is not None]
    )
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=2e-3)


def test_output_is_readable_by_pandas_polars_duckdb_and_datasets(features_file):
    import datasets
    import duckdb
    import pandas as pd
    import polars as pl

    out = features_file(n=9)
    assert len(pd.read_parquet(out)) == 9
    assert pl.read_parquet(out).height == 9
    assert duckdb.sql(f"select count(*) from '{out}' where embedding is not null").fetchall()[0][0] == 9
    assert len(datasets.Dataset.from_parquet(str(out))) == 9


def test_info_prints_rows_columns_dims_and_settings(features_file):
    out = features_file(n=7)
    result = run("info", out)
    assert result.exit_code == 0
    for expected in ("rows      7", "layers=[2]", "pooling=['mean']", "embedding", "(dim 32)", "ok: 7"):
        assert expected in result.output
    data = json.loads(run("info", out, "--json").output)
    assert data["rows"] == 7 and data["embedding_dims"] == {"embedding": 32}


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--text-column", "nope"], 3, "column(s) 'nope' not found; the columns are: review_id, body, stars, other"),
        (
            ["--text-column", "body", "--pooling", "avg"],
            2,
            "unknown pooling 'avg'; valid: mean, last, max, first, weighted-mean",
        ),
        (["--text-column", "body", "--layer", "7"], 2, "layer 7 is out of range"),
        (["--text-column", "body", "--model", "./no/such/dir"], 4, "does not exist"),
    ],
)
def test_user_mistakes_are_clean_messages_with_exit_codes(reviews, tiny_gpt2_shared, tmp_path, args, code, message):
    path, _ = reviews
    base = ["embed", path, "-o", tmp_path / "o.parquet", "-q"]
    if "--model" not in args:
        base += ["--model", tiny_gpt2_shared]
    result = run(*base, *args)
    assert result.exit_code == code, result.output
    assert message in result.output and "Traceback" not in result.output


def test_existing_output_needs_overwrite(reviews, tiny_gpt2_shared, tmp_path):
    path, _ = reviews
    out = tmp_path / "o.parquet"
    args = ["embed", path, "-o", out, "-m", tiny_gpt2_shared, "--text-column", "body", "-q"]
    assert run(*args).exit_code == 0
    result = run(*args)
    assert result.exit_code == 5 and "exists; pass --overwrite" in result.output
    assert run(*args, "--overwrite").exit_code == 0


def test_info_on_a_foreign_parquet(tmp_path):
    import pyarrow as pa

    pq.write_table(pa.table({"a": [1]}), tmp_path / "x.parquet")
    result = run("info", tmp_path / "x.parquet")
    assert result.exit_code == 3 and "not written by embedkit embed" in result.output


def test_strict_mode_stops_at_the_first_bad_row(reviews, tiny_gpt2_shared, tmp_path):
    path, _ = reviews
    out = tmp_path / "o.parquet"
    result = run("embed", path, "-o", out, "-m", tiny_gpt2_shared, "--text-column", "body", "--strict", "-q")
    assert result.exit_code == 3 and "row 3 (id 3) is empty" in result.output
    assert not out.exists() and not (tmp_path / "o.parquet.partial").exists()


def test_model_from_environment_variable(reviews, tiny_gpt2_shared, tmp_path, monkeypatch):
    path, _ = reviews
    monkeypatch.setenv("EMBEDKIT_MODEL", tiny_gpt2_shared)
    assert run("embed", path, "-o", tmp_path / "o.parquet", "--text-column", "body", "-q").exit_code == 0
    assert open_features(tmp_path / "o.parquet").config.model == tiny_gpt2_shared


def test_hub_retry_warnings_stay_quiet_unless_verbose(monkeypatch, tmp_path):
    """Offline, huggingface_hub logs each retry; by default only embedkit's one-line message should show. Only
    while the command runs: the process's environment and, afterwards, the hub's own level are left alone."""
    import logging
    import os

    from huggingface_hub.utils import logging as hub_logging

    import embedkit.store

    seen = []

    def describe(path):  # stands in for any command's work: what level does the hub log at meanwhile?
        seen.append(hub_logging.get_verbosity())
        raise embedkit.InputError("no such file")

    monkeypatch.setattr(embedkit.store, "describe", describe)
    monkeypatch.delenv("HF_HUB_VERBOSITY", raising=False)
    hub_logging.set_verbosity_info()  # a library user's own choice, before and after the command
    try:
        CliRunner().invoke(cli, ["info", str(tmp_path / "missing.parquet")])
        assert seen == [logging.ERROR] and hub_logging.get_verbosity() == logging.INFO
        CliRunner().invoke(cli, ["-v", "info", str(tmp_path / "missing.parquet")])
        assert seen[1] == logging.INFO
        assert "HF_HUB_VERBOSITY" not in os.environ
    finally:
        hub_logging.set_verbosity_warning()


def test_from_features_makes_vectors_with_every_stored_setting(reviews, tiny_gpt2_shared, tmp_path):
    """int8, float16 features: the embedder uses the stored backend and dtype, not torch and float32."""
    from embedkit.estimator import HiddenStateEmbedder

    path, rows = reviews
    out = tmp_path / "int8.parquet"
    args = ("embed", path, "-o", out, "--model", tiny_gpt2_shared, "--text-column", "body", "-q")
    assert run(*args, "--backend", "int8", "--dtype", "float16").exit_code == 0
    embedder = HiddenStateEmbedder.from_features(out, device="cpu").fit()
    assert (embedder.config_.backend, embedder.config_.dtype) == ("int8", "float16")
    table = pq.read_table(out)
    table = table.filter(pc.equal(table.column("status"), "ok"))
    stored = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    got = embedder.transform(table.column("body").to_pylist())
    assert got.dtype == np.float32 and np.array_equal(got, got.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(got, stored, atol=1e-2)


def test_hub_warnings_shown_with_verbose_are_printed_once(tmp_path):
    # In a real process (pytest's own log handlers would hide the doubling): the CLI configures logging, then
    # huggingface_hub warns through its own handler, as it does while retrying a download. -v lets them show.
    import os
    import subprocess
    import sys

    code = (
        "from huggingface_hub.utils import logging as hub_logging\nfrom embedkit.cli import cli\n"
        f"try:\n    cli(['-v', 'info', {str(tmp_path / 'none.parquet')!r}])\nexcept SystemExit:\n    pass\n"
        "hub_logging.get_logger('huggingface_hub.utils._http').warning('retrying in 1s')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_VERBOSITY"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert "does not exist" in done.stderr
    assert done.stderr.count("retrying in 1s") == 1, done.stderr


def test_layers_and_poolings_take_comma_separated_lists(reviews, tiny_gpt2_shared, tmp_path):
    path, _ = reviews
    out = tmp_path / "o.parquet"
    result = run(
        "embed",
        path,
        "-o",
        out,
        "-m",
        tiny_gpt2_shared,
        "--text-column",
        "body",
        "-l",
        "0,-1",
        "-l",
        "1",
        "-p",
        "mean,last",
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert open_features(out).config.layers == (0, 2, 1)
    bad = run(
        "embed", path, "-o", tmp_path / "p.parquet", "-m", tiny_gpt2_shared, "--text-column", "body", "-l", "1,last"
    )
    assert bad.exit_code == 2 and "'last' is not a layer index" in bad.output


def test_progress_bars_write_numbers_for_people_and_stay_away_for_short_steps(capsys):
    from embedkit.progress import progress_bar

    with progress_bar("embed", 20000, unit="text") as bar:
        bar.update(12345)
        line = bar.format_meter(**bar.format_dict)
    assert "12,345/20,000 texts" in line and "texts/s" in line and "k/s" not in line
    assert capsys.readouterr().err == ""  # over in well under a second: no bar drawn at all
    with progress_bar("read", None, unit="row") as bar:  # total unknown: a counter, no bar
        bar.update(4321)
        assert bar.format_meter(**bar.format_dict).startswith("read: 4,321 rows [")


def test_the_kept_text_column_holds_every_row_even_when_it_is_not_text(tiny_gpt2_shared, tmp_path):
    """Numbers, lists, nulls and lone surrogates in the text column: statuses say why, the column still reads."""
    source = tmp_path / "mixed.jsonl"
    source.write_text(
        '{"text": "a normal sentence"}\n{"text": 42}\n{"text": "half \\ud800 pair"}\n{"text": null}\n'
        '{"text": ["a", "b"]}\n{"text": NaN}\n',
        encoding="utf-8",
    )
    out = tmp_path / "mixed.parquet"
    # One row per part: every part must give the column the same type, or the merge fails.
    result = run("embed", source, "-o", out, "--model", tiny_gpt2_shared, "--part-rows", "1", "-q")
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column("status").to_pylist() == ["ok", "not_string", "repaired", "null", "not_string", "null"]
    texts = ["a normal sentence", "42", "half \ufffd pair", None, '["a", "b"]', None]
    assert table.column("text").to_pylist() == texts and table.schema.field("text").type == "string"
