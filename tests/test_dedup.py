"""embedkit dedup: the groups equal an all-pairs (brute force) comparison; every row comes back, one kept per group."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedkit import dedup as dedup_module
from embedkit import dedup_passes
from embedkit.config import ExtractConfig
from embedkit.dedup import dedup_file
from embedkit.errors import ConfigError, InputError, OutputError
from embedkit.store import open_features, with_metadata


def write_features(path: Path, matrix: np.ndarray, texts: list | None = None, valid=None, columns=("embedding",)):
    """A features file as embed writes it (id, text, status, embedding + embedkit metadata), with given vectors."""
    n, dim = matrix.shape
    valid = np.ones(n, dtype=bool) if valid is None else np.asarray(valid)
    data: dict[str, pa.Array] = {"id": pa.array([f"r{i}" for i in range(n)])}
    if texts is not None:
        data["text"] = pa.array(texts, type=pa.string())
    data["status"] = pa.array(["ok" if v else "empty" for v in valid])
    flat = pa.array(matrix.astype(np.float32).reshape(-1))
    for name in columns:
        data[name] = pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(~valid))
    layers = list(range(len(columns))) if len(columns) > 1 else [-1]
    config = ExtractConfig(model="synthetic-model", layers=layers).to_dict()
    meta = {"format_version": 1, "config": config, "model": {}, "columns": list(columns)}
    table = pa.table(data)
    pq.write_table(table.replace_schema_metadata(with_metadata(table.schema, meta).metadata), path)
    return path


def brute_force_groups(matrix, texts, threshold, valid=None):
    """Groups (size >= 2) from numpy all-pairs cosine plus equal normalised texts, joined by a plain union-find."""
    n = len(matrix)
    valid = np.ones(n, dtype=bool) if valid is None else np.asarray(valid)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i, j):
        parent[find(i)] = find(j)

    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    sims = unit @ unit.T
    for i, j in zip(*np.nonzero(sims >= threshold - 1e-6)):
        if i < j and valid[i] and valid[j]:
            union(int(i), int(j))
    if texts is not None:
        seen: dict[str, int] = {}
        for i, t in enumerate(texts):
            key = " ".join(t.split()) if t else ""
            if key:
                union(i, seen.setdefault(key, i))
    groups: dict[int, set[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), set()).add(i)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def found_groups(output: Path) -> set[frozenset[int]]:
    table = pq.read_table(output).to_pydict()
    groups: dict[int, set[int]] = {}
    for i, g in enumerate(table["dup_group"]):
        if g is not None:
            groups.setdefault(g, set()).add(i)
    return {frozenset(g) for g in groups.values()}


def planted(n=300, dim=16, seed=0):
    """Random directions plus near copies (small noise), exact copies, a chain, and texts with whitespace copies."""
    rng = np.random.default_rng(seed)
    matrix = rng.normal(size=(n, dim)).astype(np.float32)
    for i in range(0, 60, 3):  # near copies
        matrix[i + 1] = matrix[i] + rng.normal(scale=0.05, size=dim)
    for i in range(60, 80, 2):  # exact vector copies
        matrix[i + 1] = matrix[i]
    direction = rng.normal(size=dim)
    for k, i in enumerate(range(80, 86)):  # a chain: neighbours close, ends further apart
        matrix[i] = direction + k * 0.25 * rng.normal(size=dim) / np.sqrt(dim)
    texts = [f"text number {i}" for i in range(n)]
    texts[201] = "  text   number 200 "  # a whitespace variant of row 200 (vectors unrelated)
    texts[203] = texts[202]
    texts[205] = ""  # empty texts are never copies of each other
    texts[206] = ""
    return matrix, texts


@pytest.mark.parametrize("threshold", [0.95, 0.8, 0.6, 1.0])
def test_groups_equal_brute_force(tmp_path, threshold):
    matrix, texts = planted()
    path = write_features(tmp_path / "f.parquet", matrix, texts)
    result = dedup_file(path, tmp_path / "out.parquet", threshold=threshold)
    expected = brute_force_groups(matrix, texts, threshold)
    assert found_groups(tmp_path / "out.parquet") == expected
    assert result.groups == len(expected)
    assert result.dropped == sum(len(g) - 1 for g in expected)
    assert result.exact_copies == 2  # rows 201 and 203


def test_hnsw_search_finds_the_planted_groups(tmp_path):
    # Approximate, but on small groups well inside its 32 neighbours it finds what brute force finds.
    matrix, texts = planted()
    path = write_features(tmp_path / "f.parquet", matrix, texts)
    result = dedup_file(path, tmp_path / "out.parquet", threshold=0.95, search="hnsw")
    assert found_groups(tmp_path / "out.parquet") == brute_force_groups(matrix, texts, 0.95)
    assert "hnsw search" in result.summary_lines()[0]
    with pytest.raises(ConfigError, match="valid: exact, hnsw"):
        dedup_file(path, tmp_path / "out2.parquet", search="ivf")


def test_groups_equal_brute_force_when_pairs_are_folded(tmp_path, monkeypatch):
    # A low threshold on clustered data: many pairs, folded into component edges mid-search.
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(20, 8))
    matrix = (centres[rng.integers(0, 20, 500)] + rng.normal(scale=0.3, size=(500, 8))).astype(np.float32)
    path = write_features(tmp_path / "f.parquet", matrix)
    monkeypatch.setattr(dedup_module, "EDGE_BUDGET", 50)
    monkeypatch.setattr(dedup_module, "QUERY_BLOCK", 64)
    dedup_file(path, tmp_path / "out.parquet", threshold=0.9)
    assert found_groups(tmp_path / "out.parquet") == brute_force_groups(matrix, None, 0.9)


def test_streamed_in_small_batches_the_output_is_the_same(tmp_path, monkeypatch):
    # Row groups of 40 rows read 7 at a time: digests, vectors, ids and output columns must line up across batches.
    matrix, texts = planted()
    path = write_features(tmp_path / "f.parquet", matrix, texts)
    whole = dedup_file(path, tmp_path / "whole.parquet", threshold=0.95, keep_rule="longest")
    grouped = tmp_path / "grouped.parquet"
    pq.write_table(pq.read_table(path), grouped, row_group_size=40)
    assert pq.ParquetFile(grouped).metadata.num_row_groups == 8
    monkeypatch.setattr(dedup_passes, "BATCH_ROWS", 7)
    streamed = dedup_file(grouped, tmp_path / "streamed.parquet", threshold=0.95, keep_rule="longest")
    assert pq.read_table(tmp_path / "streamed.parquet").equals(pq.read_table(tmp_path / "whole.parquet"))
    assert streamed.summary_lines()[1:] == whole.summary_lines()[1:]  # the examples too (line 0 has the time)
    assert found_groups(tmp_path / "streamed.parquet") == brute_force_groups(matrix, texts, 0.95)


def _dedup_peaks(path: Path, output: Path) -> tuple[int, int, int]:
    """Groups, Arrow's peak allocation and Python's (tracemalloc) of ``dedup_file`` run alone in a fresh process."""
    script = (
        "import sys, tracemalloc, pyarrow as pa; from embedkit import dedup_passes; "
        "from embedkit.dedup import dedup_file; dedup_passes.BATCH_ROWS = 20; tracemalloc.start(); "
        "r = dedup_file(sys.argv[1], sys.argv[2], keep_rule='longest'); "
        "print(r.groups, pa.default_memory_pool().max_memory(), tracemalloc.get_traced_memory()[1])"
    )
    out = subprocess.run([sys.executable, "-c", script, str(path), str(output)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    groups, arrow_peak, python_peak = map(int, out.stdout.split()[-3:])
    return groups, arrow_peak, python_peak


def test_memory_does_not_grow_with_the_texts(tmp_path):
    # 128 KB texts in row groups of 20 rows; 4x the rows (19 MB -> 75 MB of text) must not raise the peaks: both
    # passes hold one batch of texts at a time (reading the whole file held it at least twice, with the output).
    length = 128 * 1024
    rng = np.random.default_rng(0)
    peaks = {}
    for rows in (150, 600):
        letters = rng.integers(97, 123, size=rows * length, dtype=np.uint8).tobytes().decode()
        texts = [letters[i * length : (i + 1) * length] for i in range(rows)]
        texts[7] = texts[3]  # one exact copy
        path = write_features(tmp_path / f"f{rows}.parquet", rng.normal(size=(rows, 64)).astype(np.float32), texts)
        pq.write_table(pq.read_table(path), path, row_group_size=20)
        del letters, texts
        groups, *peaks[rows] = _dedup_peaks(path, tmp_path / f"out{rows}.parquet")
        print(rows, [f"{p / 2**20:.1f} MB" for p in peaks[rows]])
        assert groups == 1
        assert pq.read_table(tmp_path / f"out{rows}.parquet", columns=["keep"])["keep"].to_pylist().count(False) == 1
    total = 600 * length
    for small, large, what in zip(peaks[150], peaks[600], ("Arrow", "Python")):
        assert large < 1.5 * small + 2**20, f"{what} peak {small / 2**20:.1f} MB -> {large / 2**20:.1f} MB"
    # Python's peak includes the modules dedup imports (scipy, faiss): only its growth says something.
    assert peaks[600][0] < total / 2, f"Arrow peak {peaks[600][0] / 2**20:.1f} MB for {total / 2**20:.0f} MB of texts"


def test_every_row_is_written_with_one_kept_per_group(tmp_path):
    matrix, texts = planted()
    path = write_features(tmp_path / "f.parquet", matrix, texts)
    dedup_file(path, tmp_path / "out.parquet", threshold=0.95)
    out = pq.read_table(tmp_path / "out.parquet").to_pydict()
    assert out["id"] == [f"r{i}" for i in range(len(texts))]
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(out["dup_group"]):
        if g is None:
            assert out["keep"][i] and out["dup_status"][i] == "unique" and out["dup_of"][i] is None
        else:
            groups.setdefault(g, []).append(i)
    for members in groups.values():
        kept = [i for i in members if out["keep"][i]]
        assert kept == [min(members)]  # keep rule "first"
        for i in members:
            assert out["dup_status"][i] == ("kept" if i == kept[0] else "duplicate")
            if i != kept[0]:
                assert out["dup_of"][i] == f"r{kept[0]}"
    # Group numbers follow the file order of the kept rows.
    firsts = sorted((min(m), g) for g, m in groups.items())
    assert [g for _, g in firsts] == list(range(len(groups)))
    # Exact vector copies have similarity 1 to their kept row.
    assert out["dup_similarity"][61] == pytest.approx(1.0, abs=1e-6)
    # The output is still a features file, vectors unchanged.
    feats = open_features(tmp_path / "out.parquet")
    np.testing.assert_allclose(feats.load()[0], matrix, rtol=1e-6)
    stored = json.loads(pq.read_schema(tmp_path / "out.parquet").metadata[b"embedkit.dedup"])
    assert stored["threshold"] == 0.95 and stored["keep_rule"] == "first"


def test_keep_rule_longest_keeps_the_longest_text(tmp_path):
    matrix = np.array([[1, 0, 0], [1, 0.01, 0], [1, 0, 0.01], [0, 1, 0]], dtype=np.float32)
    texts = ["short", "the longest text", "middle one", "alone"]
    path = write_features(tmp_path / "f.parquet", matrix, texts)
    dedup_file(path, tmp_path / "out.parquet", threshold=0.99, keep_rule="longest")
    out = pq.read_table(tmp_path / "out.parquet").to_pydict()
    assert out["keep"] == [False, True, False, True]
    assert out["dup_of"] == ["r1", None, "r1", None]


def test_rows_without_a_vector_are_kept_and_compared_by_text(tmp_path):
    matrix = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 1]], dtype=np.float32)
    valid = [False, True, False, True, True]
    texts = ["same words", "same  words", "lonely", "other", "fifth"]
    path = write_features(tmp_path / "f.parquet", matrix, texts, valid=valid)
    result = dedup_file(path, tmp_path / "out.parquet", threshold=0.99)
    out = pq.read_table(tmp_path / "out.parquet").to_pydict()
    # Row 0 has no vector but the same text as row 1: one group, and the row with a vector is the one kept.
    assert out["dup_status"] == ["duplicate", "kept", "no_embedding", "unique", "unique"]
    assert out["keep"] == [False, True, True, True, True]
    assert out["dup_similarity"][0] is None
    assert result.no_embedding == 2
    assert any("without a usable vector" in line for line in result.summary_lines())


def test_without_text_column_vectors_alone_decide(tmp_path):
    matrix = np.array([[1, 0], [1, 0.001], [0, 1]], dtype=np.float32)
    path = write_features(tmp_path / "f.parquet", matrix)
    result = dedup_file(path, tmp_path / "out.parquet")
    assert found_groups(tmp_path / "out.parquet") == {frozenset({0, 1})}
    assert any("no text column" in line for line in result.summary_lines())
    assert any("id 'r0'" in line for line in result.summary_lines())
    with pytest.raises(ConfigError, match="--text-column"):
        dedup_file(path, tmp_path / "out2.parquet", keep_rule="longest")


def test_summary_shows_groups_and_examples(tmp_path):
    matrix, texts = planted()
    path = write_features(tmp_path / "f.parquet", matrix, texts)
    lines = dedup_file(path, tmp_path / "out.parquet").summary_lines()
    assert "duplicate groups" in lines[0] and "keep=false" in lines[0]
    assert sum("group " in line for line in lines) == dedup_module.EXAMPLES


@pytest.mark.parametrize("rows", [0, 1])
def test_empty_and_single_row_files(tmp_path, rows):
    path = write_features(tmp_path / "f.parquet", np.ones((rows, 4), dtype=np.float32), ["x"] * rows)
    result = dedup_file(path, tmp_path / "out.parquet", keep_rule="longest")
    assert result.groups == 0 and pq.read_table(tmp_path / "out.parquet").column("keep").to_pylist() == [True] * rows


def test_rows_without_any_vector_are_grouped_by_text_alone(tmp_path):
    path = write_features(
        tmp_path / "f.parquet", np.ones((3, 4), dtype=np.float32), ["x", "x", None], valid=[False] * 3
    )
    result = dedup_file(path, tmp_path / "out.parquet")
    out = pq.read_table(tmp_path / "out.parquet").to_pydict()
    assert out["keep"] == [True, False, True] and out["dup_status"][2] == "no_embedding"
    assert result.searched == 0 and result.no_embedding == 3


@pytest.mark.parametrize("threshold", [0, -0.5, 1.5, float("nan"), "x"])
def test_threshold_outside_range_is_a_usage_error(tmp_path, threshold):
    path = write_features(tmp_path / "f.parquet", np.eye(3, dtype=np.float32))
    with pytest.raises(ConfigError, match=r"threshold"):
        dedup_file(path, tmp_path / "out.parquet", threshold=threshold)
    assert not (tmp_path / "out.parquet").exists()


def test_several_embedding_columns_need_column(tmp_path):
    matrix = np.eye(4, dtype=np.float32)
    path = write_features(tmp_path / "f.parquet", matrix, columns=("embedding_l0_mean", "embedding_l1_mean"))
    with pytest.raises(InputError, match="--column"):
        dedup_file(path, tmp_path / "out.parquet")
    dedup_file(path, tmp_path / "out.parquet", column="embedding_l1_mean")


def test_existing_output_is_refused_without_overwrite(tmp_path):
    path = write_features(tmp_path / "f.parquet", np.eye(3, dtype=np.float32))
    dedup_file(path, tmp_path / "out.parquet")
    with pytest.raises(OutputError, match="--overwrite"):
        dedup_file(path, tmp_path / "out.parquet")
    dedup_file(path, tmp_path / "out.parquet", overwrite=True)
    # A re-run on its own output replaces the dedup columns instead of failing on duplicates.
    dedup_file(tmp_path / "out.parquet", tmp_path / "again.parquet")
    assert pq.read_schema(tmp_path / "again.parquet").names.count("keep") == 1


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "embedkit", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_cli_bad_input_gives_clean_messages_and_exit_codes(tmp_path):
    path = write_features(tmp_path / "f.parquet", np.eye(3, dtype=np.float32), ["a", "b", "c"])
    pq.write_table(pa.table({"id": [1, 2], "text": ["x", "y"]}), tmp_path / "plain.parquet")
    with_meta = pq.read_table(path).drop_columns(["embedding"])
    pq.write_table(with_meta, tmp_path / "novec.parquet")
    cases = [
        (["dedup", "missing.parquet", "-o", "o.parquet"], 3, "does not exist"),
        (["dedup", "plain.parquet", "-o", "o.parquet"], 3, "not written by embedkit"),
        (["dedup", "novec.parquet", "-o", "o.parquet"], 3, "no embedding column"),
        (["dedup", "f.parquet", "-o", "o.parquet", "--threshold", "1.5"], 2, "(0, 1]"),
        (["dedup", "f.parquet", "-o", "o.parquet", "--threshold", "0"], 2, "(0, 1]"),
        (["dedup", "f.parquet", "-o", "o.parquet", "--text-column", "nope"], 3, "not found"),
    ]
    for args, code, message in cases:
        proc = _cli(*args, cwd=tmp_path)
        assert proc.returncode == code, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
    proc = _cli("dedup", "f.parquet", "-o", "o.parquet", "--threshold", "0.9", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "3 rows -> o.parquet; 0 duplicate groups" in proc.stdout
    proc = _cli("dedup", "f.parquet", "-o", "o.parquet", cwd=tmp_path)
    assert proc.returncode == 5 and "--overwrite" in proc.stderr
