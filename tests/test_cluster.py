"""The clustering stage: recovery of known groups, pre-processing that matters, outputs, CLI and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from sklearn.metrics import normalized_mutual_info_score

from embedkit import ConfigError, InputError, OutputError
from embedkit.cli import cli
from embedkit.cluster import (
    ClusterOptions,
    cluster_file,
    cluster_vectors,
    distinctive_terms,
    load_clustering,
)
from embedkit.store import vectors_to_arrow
from embedkit.summary import Summarised, summary_text

TOPICS = {
    0: "cat dog bird fish pets",
    1: "bank loan price market money",
    2: "team win lose ball game",
    3: "music film song city road",
}


def blobs(n_per: int, k: int, dim: int, seed: int = 0, spread: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian blobs around random unit directions."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(k), n_per)
    return (centres[labels] + rng.normal(scale=spread, size=(len(labels), dim))).astype(np.float32), labels


def gpt2_shaped(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """Make vectors look like GPT-2 hidden states: a huge shared offset and two rogue, meaningless dimensions."""
    rng = np.random.default_rng(seed)
    out = vectors + 60.0  # every cosine similarity close to 1
    out[:, :2] += rng.normal(size=(len(vectors), 2)) * np.array([40.0, 25.0])  # variance that carries no groups
    return out.astype(np.float32)


@pytest.fixture
def blob_file(features_file, tmp_path):
    """Write given vectors (and labels) into an embedkit-style Parquet made by the embed stage."""

    def make(
        vectors: np.ndarray,
        labels: np.ndarray | None = None,
        valid: np.ndarray | None = None,
        name: str = "blobs.parquet",
    ) -> Path:
        path = features_file(n=len(vectors), name=name)
        table = pq.read_table(path)
        valid = np.ones(len(vectors), dtype=bool) if valid is None else valid
        table = table.set_column(
            table.schema.get_field_index("embedding"), "embedding", vectors_to_arrow(vectors, valid, "float32")
        )
        if labels is not None:
            table = table.set_column(
                table.schema.get_field_index("label"), "label", pa.array([f"g{v}" for v in labels])
            )
            words = [TOPICS[v % len(TOPICS)] for v in labels]
            table = table.set_column(table.schema.get_field_index("text"), "text", pa.array(words))
        pq.write_table(table, path)  # the embed metadata travels with the schema
        return path

    return make


def run_cli(*args: str):
    return CliRunner().invoke(cli, ["cluster", *map(str, args)])


# ------------------------------------------------------------------------------------------- recovery


@pytest.mark.parametrize("method", ["kmeans", "minibatch-kmeans", "agglomerative"])
def test_known_k_recovers_blobs(blob_file, tmp_path, method):
    vectors, labels = blobs(40, 4, 32)
    summary = cluster_file(
        blob_file(vectors, labels), tmp_path / "out", ClusterOptions(method=method, k=4), label_column="label"
    ).summary
    assert summary["metrics"]["nmi"] > 0.97
    assert summary["metrics"]["ari"] > 0.95
    assert sorted(c["size"] for c in summary["clusters"]) == [40, 40, 40, 40]


def test_auto_k_finds_the_number_of_blobs(blob_file, tmp_path):
    vectors, labels = blobs(40, 5, 32, seed=1)
    summary = cluster_file(
        blob_file(vectors, labels), tmp_path / "out", ClusterOptions(k="auto", k_range=(2, 10)), label_column="label"
    ).summary
    assert summary["k"] == 5
    scores = summary["k_selection"]["scores"]
    assert max(scores, key=scores.get) == 5 and set(scores) == set(range(2, 11))
    assert summary["metrics"]["nmi"] > 0.97


def test_hdbscan_finds_blobs_and_marks_noise(blob_file, tmp_path):
    vectors, labels = blobs(50, 3, 16, seed=2, spread=0.02)
    outliers = np.random.default_rng(3).uniform(-3, 3, size=(4, 16)).astype(np.float32)
    path = blob_file(np.vstack([vectors, outliers]), np.concatenate([labels, [9, 9, 9, 9]]))
    summary = cluster_file(
        path, tmp_path / "out", ClusterOptions(method="hdbscan", min_cluster_size=10, pca=0), label_column="label"
    ).summary
    assert summary["metrics"]["clusters"] == 3
    assert summary["clusters"][-1]["cluster"] == -1 and summary["metrics"]["noise_rows"] >= 2
    table = pq.read_table(tmp_path / "out" / "clusters.parquet")
    found = table.column("cluster").to_numpy()
    assert normalized_mutual_info_score(labels, found[:150]) > 0.97 and (found[:150] >= 0).all()
    assert table.column("distance").null_count == int((found == -1).sum())


def test_mostly_noise_hdbscan_and_missing_texts_are_explained(blob_file, tmp_path):
    vectors = np.random.default_rng(4).normal(size=(60, 16)).astype(np.float32)  # no dense region at all
    path = blob_file(vectors)
    table = pq.read_table(path)
    renamed = table.rename_columns(["body" if c == "text" else c for c in table.column_names])
    pq.write_table(renamed.replace_schema_metadata(table.schema.metadata), tmp_path / "b.parquet")
    result = run_cli(tmp_path / "b.parquet", "-o", tmp_path / "out", "--method", "hdbscan", "--min-cluster-size", "20")
    assert result.exit_code == 0, result.output
    assert "note: hdbscan marked" in result.output and "lower --min-cluster-size (now 20)" in result.output
    assert "pass --text-column COLUMN" in result.output and "text columns here: body, label" in result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(summary["notes"]) == 2
    kept = cluster_file(path, tmp_path / "out2", ClusterOptions(k=2))  # `text` present, k-means: nothing to say
    assert kept.summary["notes"] == []


def test_defaults_undo_gpt2_anisotropy():
    """Raw k-means on GPT-2-shaped vectors splits along rogue dimensions; the default pre-processing does not."""
    vectors, labels = blobs(60, 4, 64, seed=4, spread=0.15)
    shaped = gpt2_shaped(vectors)
    cosines = (shaped / np.linalg.norm(shaped, axis=1, keepdims=True))[:50]
    assert (cosines @ cosines.T).mean() > 0.9  # the anisotropy the defaults must undo
    raw = cluster_vectors(shaped, ClusterOptions(k=4, standardize=False, center=False, normalize=False, pca=0))
    default = cluster_vectors(shaped, ClusterOptions(k=4))
    assert normalized_mutual_info_score(labels, raw.labels) < 0.3
    assert normalized_mutual_info_score(labels, default.labels) > 0.95


def test_sampled_fits_extend_to_every_row(monkeypatch):
    """Agglomerative and HDBSCAN are fitted on a sample on big data; every other row must still get a cluster."""
    from embedkit.cluster import fit, k_selection

    monkeypatch.setattr(fit, "MAX_FIT_ROWS", 60)
    monkeypatch.setattr(k_selection, "AUTO_K_ROWS", 80)
    vectors, labels = blobs(50, 3, 16, seed=5, spread=0.02)
    for options in (
        ClusterOptions(method="agglomerative", k="auto", k_range=(2, 6)),
        ClusterOptions(method="hdbscan", min_cluster_size=5),
    ):
        result = cluster_vectors(vectors, options)
        assert len(result.labels) == 150
        assert normalized_mutual_info_score(labels, result.labels) > 0.95, options.method


def test_preprocessing_description():
    vectors, _ = blobs(30, 2, 100)
    result = cluster_vectors(vectors, ClusterOptions(k=2, pca=8))
    assert result.vectors.shape == (60, 8) and result.vectors.dtype == np.float32
    assert result.preprocessing["pca"] == 8 and 0 < result.preprocessing["explained_variance"] <= 1
    none = cluster_vectors(vectors, ClusterOptions(k=2, standardize=False, center=False, normalize=False, pca=0))
    np.testing.assert_array_equal(none.vectors, vectors)
    assert none.preprocessing["dim"] == 100


def test_distinctive_terms_follow_the_clusters():
    texts = [TOPICS[i % 3] + " the of" for i in range(30)]
    labels = np.array([i % 3 for i in range(30)])
    terms = distinctive_terms(texts, labels, 3, top=5)
    for c in range(3):
        assert set(terms[c]) == set(TOPICS[c].split())
    assert distinctive_terms(["the of and"] * 4, np.array([0, 0, 1, 1]), 2) == [[], []]


# ------------------------------------------------------------------------------------------- outputs


def test_cli_writes_consistent_outputs(features_file, tmp_path):
    path = features_file(n=45)
    out = tmp_path / "clusters"
    result = run_cli(path, "-o", out, "--k", "3", "--label-column", "label", "--keep", "label", "--quiet")
    assert result.exit_code == 0, result.output
    files = ["clusters.parquet", "embedkit_clusters.json", "map.png", "summary.json"]
    assert sorted(p.name for p in out.iterdir()) == files
    table = pq.read_table(out / "clusters.parquet")
    source = pq.read_table(path)
    assert table.column_names == ["id", "cluster", "distance", "label"]
    assert table.column("id").to_pylist() == source.column("id").to_pylist()
    assert table.column("label").to_pylist() == source.column("label").to_pylist()
    clusters = table.column("cluster").to_numpy()
    assert set(clusters) == {0, 1, 2} and (table.column("distance").to_numpy() >= 0).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clustered_rows"] == 45 and summary["k"] == 3 and summary["text_column"] == "text"
    assert [c["size"] for c in summary["clusters"]] == list(np.bincount(clusters))
    assert all(c["terms"] and c["central_texts"] for c in summary["clusters"])
    assert {"silhouette", "nmi", "ari"} <= set(summary["metrics"])
    assert (out / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))
    loaded = load_clustering(out)  # every file verified against the manifest
    assert loaded.summary == summary and loaded.rows == 45 and loaded.k == 3
    assert loaded.table().column("cluster").to_pylist() == table.column("cluster").to_pylist()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".clusters")) == [".clusters.lock"]


def test_cli_prints_the_table(blob_file, tmp_path):
    vectors, labels = blobs(20, 2, 16)
    result = run_cli(
        blob_file(vectors, labels), "-o", tmp_path / "out", "--k", "2", "--label-column", "label", "--map", "none"
    )
    assert result.exit_code == 0, result.output
    assert "40 rows clustered by kmeans into 2 clusters" in result.output
    assert "NMI 1.000" in result.output and "cat" in result.output
    assert not (tmp_path / "out" / "map.png").exists()


def test_tsne_map_and_json_output(features_file, tmp_path):
    result = run_cli(features_file(n=30), "-o", tmp_path / "out", "--k", "2", "--map", "tsne", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[: result.output.rindex("}") + 1])["files"]["map"] == "map.png"


def test_null_embeddings_are_skipped_and_counted(blob_file, tmp_path):
    vectors, labels = blobs(20, 2, 16)
    valid = np.ones(40, dtype=bool)
    valid[[3, 17]] = False
    result = cluster_file(blob_file(vectors, labels, valid), tmp_path / "out", ClusterOptions(k=2))
    assert isinstance(result, Summarised) and result.output_dir == tmp_path / "out"
    summary = result.summary
    assert summary["skipped_rows"]["null_embedding"] == 2 and summary["clustered_rows"] == 38
    assert pq.read_table(tmp_path / "out" / "clusters.parquet").num_rows == 38
    assert "skipped 2 rows with a null embedding" in summary_text(result)


def test_existing_output_needs_overwrite(features_file, tmp_path):
    path = features_file(n=20)
    assert run_cli(path, "-o", tmp_path / "out", "--k", "2", "-q").exit_code == 0
    again = run_cli(path, "-o", tmp_path / "out", "--k", "2", "-q")
    assert again.exit_code == 5 and "--overwrite" in again.output
    assert run_cli(path, "-o", tmp_path / "out", "--k", "3", "-q", "--overwrite").exit_code == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["k"] == 3


# ------------------------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    result = run_cli(tmp_path / "nope.parquet", "-o", tmp_path / "out")
    assert result.exit_code == 3 and "does not exist" in result.output
    assert not (tmp_path / "out").exists()


def test_file_without_embedding_column_lists_columns(features_file, tmp_path):
    path = features_file(n=10)
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["embedding"]), path)
    result = run_cli(path, "-o", tmp_path / "out")
    assert result.exit_code == 3
    assert "no embedding column" in result.output and "id, text, label" in result.output


def test_vectors_of_mixed_dimensions_are_named_as_such(features_file, tmp_path):
    path = features_file(n=10)
    table = pq.read_table(path)
    vectors = [
        v[: 4 + i % 2] for i, v in enumerate(table.column("embedding").to_pylist())
    ]  # 4-d and 5-d rows in one column
    table = table.set_column(
        table.schema.get_field_index("embedding"), "embedding", pa.array(vectors, pa.list_(pa.float32()))
    )
    pq.write_table(table, path)
    result = run_cli(path, "-o", tmp_path / "out")
    assert result.exit_code == 3
    assert "varying length" in result.output and "no embedding column" not in result.output


def test_all_null_embeddings(blob_file, tmp_path):
    vectors, _ = blobs(5, 2, 8)
    path = blob_file(vectors, valid=np.zeros(10, dtype=bool))
    result = run_cli(path, "-o", tmp_path / "out", "--k", "2")
    assert result.exit_code == 3 and "no row has a usable embedding" in result.output and "10 null" in result.output
    assert not (tmp_path / "out").exists()


def test_k_larger_than_rows(features_file, tmp_path):
    result = run_cli(features_file(n=6), "-o", tmp_path / "out", "--k", "7")
    assert result.exit_code == 3 and "k=7 is larger than the 6 rows" in result.output


def test_too_few_rows(blob_file, tmp_path):
    vectors, _ = blobs(1, 2, 8)
    one = blob_file(vectors[:1], name="one.parquet")
    result = run_cli(one, "-o", tmp_path / "a", "--k", "2")
    assert result.exit_code == 3 and "at least 2 rows" in result.output
    with pytest.raises(InputError, match="k auto needs more than 2 rows"):
        cluster_vectors(vectors, ClusterOptions(k="auto"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--k", "many"], "k must be 'auto' or an integer >= 2"),
        (["--k", "1"], "k must be 'auto' or an integer >= 2"),
        (["--k-range", "5:3"], "k range must satisfy"),
        (["--k-range", "2-9"], "MIN:MAX"),
        (["--method", "hdbscan", "--k", "3"], "hdbscan finds the number of clusters itself"),
        (["--method", "spectral"], "Invalid value for '--method'"),
    ],
)
def test_bad_options(features_file, tmp_path, args, message):
    result = run_cli(features_file(n=10), "-o", tmp_path / "out", *args)
    assert result.exit_code == 2 and message in result.output


def test_missing_label_column_lists_columns(features_file, tmp_path):
    result = run_cli(features_file(n=10), "-o", tmp_path / "out", "--label-column", "topic")
    assert result.exit_code == 3 and "'topic' not found" in result.output and "label" in result.output


def test_output_parent_must_exist(features_file, tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        cluster_file(features_file(n=10), tmp_path / "no" / "out", ClusterOptions(k=2))


def test_unknown_option_values_raise_config_error():
    with pytest.raises(ConfigError, match="valid: kmeans, minibatch-kmeans, hdbscan, agglomerative"):
        ClusterOptions(method="spectral")
    with pytest.raises(ConfigError, match="valid: pca, tsne, umap, none"):
        ClusterOptions(map="mds")


def test_streamed_two_pass_read_keeps_rows_in_order(blob_file, tmp_path, monkeypatch):
    """Big files are read twice in batches (sample, then transform); rows, ids and skips must come out right."""
    from embedkit.cluster import preprocessing

    monkeypatch.setattr(preprocessing, "PREPROCESS_FIT_ROWS", 25)
    monkeypatch.setattr(preprocessing, "CHUNK_ROWS", 16)
    vectors, labels = blobs(30, 3, 16, seed=6)
    valid = np.ones(90, dtype=bool)
    valid[[0, 40, 89]] = False
    path = blob_file(vectors, labels, valid)
    summary = cluster_file(
        path, tmp_path / "out", ClusterOptions(k=3, pca=4), label_column="label", keep=["label"]
    ).summary
    assert summary["preprocessing"]["fit_rows"] < 87 and summary["skipped_rows"]["null_embedding"] == 3
    table = pq.read_table(tmp_path / "out" / "clusters.parquet")
    expected = [i for i, ok in zip(pq.read_table(path).column("id").to_pylist(), valid) if ok]
    assert table.column("id").to_pylist() == expected
    assert summary["metrics"]["nmi"] > 0.97


def test_figures_leave_pyplot_alone(tmp_path):
    """Every figure is drawn with matplotlib's object API: pyplot (global backend and figure registry) is never
    imported, so a host program's own pyplot state is untouched. Checked in a fresh process (pytest may import it)."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from embedkit.cluster import ClusterOptions, cluster_vectors, draw_map\n"
        "from embedkit.plots import heatmap_png, separation_png\n"
        "from embedkit.probe.score import PairScore\n"
        "from embedkit.plots import probe_plot\n"
        "from pathlib import Path\n"
        "out = Path(sys.argv[1])\n"
        "X = np.concatenate([np.random.default_rng(0).normal(c, 0.3, size=(30, 8)) for c in range(3)])\n"
        "assert draw_map(cluster_vectors(X, ClusterOptions(k=3)), out / 'map.png') == 90\n"
        "s = [PairScore(l, 'mean', f'c{l}', [0.5, 0.6], [0.4, 0.5], 0.55, 0.45, 30) for l in range(3)]\n"
        "probe_plot(s, out / 'probe.png', 'title', s[1])\n"
        "rows = [dict(test='t', layer=l, pooling='mean', effect_size=0.5, p_value=0.01, p_reverse=0.9,"
        " probe_accuracy=0.7, majority_share=0.5) for l in range(3)]\n"
        "assert heatmap_png(rows, 'h')[:4] == separation_png(rows, 's')[:4] == b'\\x89PNG'\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert all((tmp_path / name).read_bytes()[:4] == b"\x89PNG" for name in ("map.png", "probe.png"))
    assert not [p for p in tmp_path.iterdir() if p.name not in ("map.png", "probe.png")]  # atomic: no temp left


def test_output_with_a_trailing_slash_is_named_once(features_file, tmp_path):
    """`-o clusters/` used to print "wrote clusters//"."""
    result = run_cli(features_file(n=20), "-o", f"{tmp_path / 'out'}/", "--k", "2", "--map", "none", "-q")
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'out'}/ (clusters.parquet, summary.json) in " in result.output
    assert "//" not in result.output


@pytest.mark.parametrize(
    ("target", "args", "hint"),
    [
        ("embedkit.cluster.cluster_file", ["cluster", "{f}", "-o", "{o}"], "embedkit cluster`: the reduced vectors"),
        ("embedkit.classify.train", ["train", "{f}", "-y", "label", "-o", "{o}"], "embedkit train`: the vectors"),
        ("embedkit.index.build_index", ["index", "build", "{f}", "-o", "{o}"], "embedkit index`: lower --memory"),
        ("embedkit.embed.embed", ["embed", "{f}", "-o", "{o}.parquet"], "embedkit embed`: lower --batch-tokens"),
    ],
)
def test_out_of_memory_names_the_command_that_ran(features_file, tmp_path, monkeypatch, target, args, hint):
    """The hint used to tell every command to lower --batch-tokens, an option cluster, train and index lack."""

    def exhausted(*args, **kwargs):
        raise MemoryError

    path = features_file(n=10)  # made before the patch: the fixture embeds through the same driver
    monkeypatch.setattr(target, exhausted)
    result = CliRunner().invoke(cli, [a.format(f=path, o=tmp_path / "out") for a in args])
    assert result.exit_code == 1 and f"out of memory in `{hint}" in result.output, result.output


def test_choosing_k_progress_reads_as_candidates_per_second(capsys):
    """The bar's unit was "k": tqdm printed "1.38k/s", which reads as thousands of rows per second."""
    from embedkit.cluster import choose_k

    vectors, _ = blobs(20, 3, 8)
    choose_k(vectors, ClusterOptions(k_range=(2, 4)), progress=True)
    err = capsys.readouterr().err
    assert "choosing k" in err and " candidates/s" in err and "k/s" not in err
