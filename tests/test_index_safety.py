"""Index directories are untrusted data and shared outputs (issue #15).

Hostile or hand-edited ``index.json`` files are refused with exit 3 naming the field, and nothing outside the
index directory is read, written or deleted; concurrent writers never both succeed and never lose a row; a
kill -9 at any instant of ``index build --overwrite`` or ``index add`` leaves the old index or the new one,
complete, and the next run cleans up.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from test_index import clustered, write_vectors

from embedkit import ExtractConfig, artefact
from embedkit.cli import cli
from embedkit.errors import InputError
from embedkit.index import Index, add_to_index, build_index
from embedkit.store import with_metadata

ROOT = Path(__file__).resolve().parents[1]
N_BASE, N_BATCH = 200, 40


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _popen(*args, script: str | None = None) -> subprocess.Popen:
    command = (
        [sys.executable, "-c", script, *map(str, args)]
        if script
        else [sys.executable, "-m", "embedkit", *map(str, args)]
    )
    return subprocess.Popen(
        command, env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _batch(tmp_path: Path, name: str, start: int, n: int = N_BATCH, seed: int = 1) -> Path:
    return write_vectors(tmp_path / name, clustered(n, seed=seed + start), ids=np.arange(start, start + n))


def _ids(directory: Path) -> set[int]:
    return set(Index.load(directory).ids.column("id").to_pylist())


def _assert_complete(directory: Path) -> set[int]:
    """The index loads, its FAISS rows, id map and index.json agree, and exact search finds a row's own vector."""
    index = Index.load(directory)
    ids = index.ids.column("id").to_pylist()
    assert index.size == len(ids) == index.meta["rows"] == len(set(ids))
    for position in (0, index.size - 1):
        hit = index.search_vectors(index._reconstruct(position), k=5)  # HNSW too finds a row's own vector
        assert position in hit.positions[0]
    return set(ids)


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}.") and not p.name.endswith(".lock"))


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (lock files aside) with its bytes: what a refused command must leave alone."""

    def content(p: Path) -> bytes:
        if p.is_symlink():
            return b"link to " + os.readlink(p).encode()
        return p.read_bytes() if p.is_file() else b"directory" if p.is_dir() else b"special file"  # FIFOs: not read

    return {str(p.relative_to(root)): content(p) for p in sorted(root.rglob("*")) if not p.name.endswith(".lock")}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """One flat cosine index of N_BASE rows (ids 0..N_BASE-1), copied by each test that changes it."""
    root = tmp_path_factory.mktemp("built")
    build_index(write_vectors(root / "base.parquet", clustered(N_BASE)), root / "ix", kind="flat")
    return root / "ix"


@pytest.fixture
def ix(built, tmp_path) -> Path:
    shutil.copytree(built, tmp_path / "ix")
    return tmp_path / "ix"


def _meta(ix: Path) -> dict:
    return json.loads((ix / "index.json").read_text())


def _write_meta(ix: Path, meta) -> None:
    (ix / "index.json").write_text(json.dumps(meta))


def _to_format_1(ix: Path, index_name: str = "index-0.faiss", ids_name: str = "ids-0.parquet") -> dict:
    """Rewrite a current index directory in the layout and index.json of format 1 (embedkit before #15)."""
    meta = _meta(ix)
    files = meta.pop("files")
    old = {"index": {"name": index_name, **files["index.faiss"]}, "ids": {"name": ids_name, **files["ids.parquet"]}}
    for role, new_name in (("index.faiss", index_name), ("ids.parquet", ids_name)):
        if (ix / role).exists() and "/" not in new_name:
            (ix / role).rename(ix / new_name)
    meta.update(format=1, kind=meta.pop("index_kind"), files=old)
    _write_meta(ix, meta)
    return meta


# ---------------------------------------------------------------------------------------------- hostile names


@pytest.mark.parametrize(
    "attack",
    [
        "traversal",
        "absolute",
        "symlink_out",
        "unlisted",
        "format1_traversal",
        "format1_absolute",
        "format1_same_file",
        "manifest_symlink",
        "fifo",
        "directory",
    ],
)
def test_hostile_file_names_are_refused_and_nothing_outside_is_touched(ix, tmp_path, attack):
    outside = tmp_path / "outside.faiss"
    shutil.copy(ix / "index.faiss", outside)  # a sentinel that even has the right bytes
    meta = _meta(ix)
    entry = meta["files"]["index.faiss"]
    if attack == "traversal":
        meta["files"] = {"../outside.faiss": entry, "ids.parquet": meta["files"]["ids.parquet"]}
    elif attack == "absolute":
        meta["files"] = {str(outside): entry, "ids.parquet": meta["files"]["ids.parquet"]}
    elif attack == "symlink_out":
        (ix / "index.faiss").unlink()
        (ix / "index.faiss").symlink_to(outside)  # same bytes, same digest: refused for being a link
    elif attack == "unlisted":
        meta["files"] = {"other.faiss": entry, "ids.parquet": meta["files"]["ids.parquet"]}
        (ix / "index.faiss").rename(ix / "other.faiss")
    elif attack in ("fifo", "directory"):  # reading a FIFO would hang; neither is a file of an artefact
        (ix / "index.faiss").unlink()
        os.mkfifo(ix / "index.faiss") if attack == "fifo" else (ix / "index.faiss").mkdir()
    if attack.startswith("format1"):
        target = {
            "format1_traversal": "../outside.faiss",
            "format1_absolute": str(outside),
            "format1_same_file": "ids-0.parquet",
        }[attack]
        meta = _to_format_1(ix, index_name=target)
    _write_meta(ix, meta)
    if attack == "manifest_symlink":
        (tmp_path / "outside.json").write_text(json.dumps(meta))
        (ix / "index.json").unlink()
        (ix / "index.json").symlink_to(tmp_path / "outside.json")
    before = _snapshot(tmp_path)
    more = _batch(tmp_path, "more.parquet", 10_000)
    before["more.parquet"] = more.read_bytes()

    runner = CliRunner()
    searched = runner.invoke(cli, ["search", str(ix), "--id", "3"])
    added = runner.invoke(cli, ["index", "add", str(ix), str(more), "--quiet"])
    for result in (searched, added):
        assert result.exit_code == 3, result.output
        assert "Traceback" not in result.output and "internal error" not in result.output
    assert any(word in added.output for word in ("plain names", "symlink", "not listed", "two different")), added.output
    assert _snapshot(tmp_path) == before  # the sentinel exists and is unchanged, the index directory too
    assert not _leftovers(tmp_path, "ix")


# ---------------------------------------------------------------------------------------------- hand-edited fields


def _drop(key):
    return lambda m: m.pop(key)


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


EDITS = {
    "dim_wrong": (_set("dim", 8), "'dim' is 8 but index.faiss holds 16-d"),
    "dim_missing": (_drop("dim"), "'dim' is missing"),
    "dim_string": (_set("dim", "16"), "'dim' is '16'"),
    "dim_bool": (_set("dim", True), "'dim' is True"),
    "dim_zero": (_set("dim", 0), "'dim' is 0"),
    "dim_huge": (_set("dim", 10**12), "'dim' is 1000000000000"),
    "metric_missing": (_drop("metric"), "'metric' is missing"),
    "metric_bogus": (_set("metric", "bogus"), "'metric' is 'bogus'"),
    "metric_other": (_set("metric", "l2"), "'metric' is 'l2' but index.faiss ranks by inner product"),
    "rows_string": (_set("rows", "200"), "'rows' is '200'"),
    "rows_wrong": (_set("rows", 199), "'rows' is 199 but index.faiss holds 200"),
    "rows_negative": (_set("rows", -1), "'rows' is -1"),
    "params_list": (_set("params", [1]), "'params' is [1]"),
    "params_unknown": (_set("params", {"nlist": 4}), "'params.nlist'"),
    "params_string": (_set("params", {"nprobe": "many"}), "'params.nprobe' is 'many'"),
    "params_huge": (_set("params", {"efSearch": 10**12}), "'params.efSearch'"),
    "params_not_this_index": (_set("params", {"nprobe": 4}), "'params.nprobe' = 4 does not fit"),
    "column_missing": (_drop("column"), "'column' is missing"),
    "stored_columns_other": (_set("stored_columns", ["title"]), "'stored_columns' is ['title']"),
    "stored_columns_string": (_set("stored_columns", "text"), "'stored_columns' is 'text'"),
    "generation_string": (_set("generation", "x"), "'generation' is 'x'"),
    "build_string": (_set("build", "x"), "'build' is 'x'"),
    "adds_string": (lambda m: m["build"].__setitem__("adds", "x"), "'build'"),
    "config_missing": (_drop("config"), "'config' is missing"),
    "config_string": (_set("config", "gpt2"), "'config' is 'gpt2'"),
    "kind_other": (_set("kind", "embedkit-classifier"), "'kind' is 'embedkit-classifier'"),
    "index_kind_bogus": (_set("index_kind", "lsh"), "'index_kind' is 'lsh'"),
    "index_kind_missing": (_drop("index_kind"), "'index_kind' is missing"),
    "format_string": (_set("format", "2"), "'format' is '2'"),
    "files_entry_missing": (lambda m: m["files"].pop("ids.parquet"), "ids.parquet is not listed"),
    "files_not_object": (_set("files", ["index.faiss"]), "lists no files"),
    "file_sizes_lie": (lambda m: m["files"]["index.faiss"].__setitem__("bytes", 1), "truncated or replaced"),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_hand_edited_index_json_is_refused_with_exit_3_naming_the_field(ix, tmp_path, edit):
    change, expected = EDITS[edit]
    meta = _meta(ix)
    change(meta)
    _write_meta(ix, meta)
    before = _snapshot(ix)
    runner = CliRunner()
    for args in (
        ["search", str(ix), "--id", "3"],
        ["index", "add", str(ix), str(_batch(tmp_path, "more.parquet", 10_000)), "--quiet"],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 3, (args, result.output)
        assert expected in result.output, result.output
    assert _snapshot(ix) == before and not _leftovers(tmp_path, "ix")


FIELDS = [
    "format",
    "kind",
    "index_kind",
    "factory",
    "metric",
    "dim",
    "rows",
    "column",
    "stored_columns",
    "params",
    "config",
    "model",
    "generation",
    "source",
    "build",
    "files",
    "build.adds",
    "params.efSearch",
    "config.model",
    "config.layers",
    "config.pooling",
    "files.index.faiss",
    "files.index.faiss.bytes",
]
WRONG_TYPES = [None, "x", -1, 1.5, True, 10**30, [], {}, [1, "a"]]


@pytest.mark.parametrize("field", FIELDS)
def test_any_type_in_any_field_is_exit_0_3_or_6_never_an_internal_error(tmp_path, field):
    root = tmp_path / "hnsw"
    root.mkdir()
    build_index(write_vectors(root / "f.parquet", clustered(200)), root / "ix", kind="hnsw")  # has params
    reference = _meta(root / "ix")
    more = _batch(tmp_path, "more.parquet", 10_000)
    runner = CliRunner()
    *parents, last = ["files", "index.faiss", *field.split(".")[3:]] if field.startswith("files.") else field.split(".")
    for value in [*WRONG_TYPES, "drop"]:
        shutil.rmtree(tmp_path / "ix", ignore_errors=True)
        shutil.copytree(root / "ix", tmp_path / "ix")
        meta = json.loads(json.dumps(reference))
        node = meta
        for key in parents:
            node = node[key]
        if value == "drop":
            node.pop(last)
        else:
            node[last] = value
        _write_meta(tmp_path / "ix", meta)
        before = _snapshot(tmp_path / "ix")
        for args in (
            ["search", str(tmp_path / "ix"), "--id", "3", "-k", "2"],
            ["index", "add", str(tmp_path / "ix"), str(more), "-q"],
        ):
            result = runner.invoke(cli, args)
            assert result.exit_code in (0, 3, 6), (field, value, args[0], result.output)
            if result.exit_code:
                assert _snapshot(tmp_path / "ix") == before


def test_other_damage_is_refused_cleanly(ix):
    runner = CliRunner()
    twice = pa.Table.from_arrays([pa.array(range(N_BASE))] * 2 + [pa.array(["t"] * N_BASE)], ["id", "id", "text"])
    never = "ids, which embedkit never writes"
    for ids, message in (
        (pa.table({"id": [[1]] * N_BASE, "text": ["t"] * N_BASE}), never),  # unhashable ids
        (pa.table({"id": [None] * N_BASE, "text": ["t"] * N_BASE}), never),
        (twice, "the id map ids.parquet"),
    ):  # pyarrow refuses to read it
        pq.write_table(ids, ix / "ids.parquet")
        meta = _meta(ix)
        meta["files"]["ids.parquet"] = artefact.file_entry(ix / "ids.parquet")  # digests that match the new file
        _write_meta(ix, meta)
        result = runner.invoke(cli, ["search", str(ix), "--id", "3"])
        assert result.exit_code == 3 and message in result.output, result.output
    (ix / "ids.parquet").unlink()
    assert runner.invoke(cli, ["search", str(ix), "--id", "3"]).exit_code == 3
    _write_meta(ix, [1, 2])
    result = runner.invoke(cli, ["search", str(ix), "--id", "3"])
    assert result.exit_code == 3 and "not a JSON object" in result.output
    (ix / "index.json").write_text(json.dumps({"format": 99, "files": {}}))
    result = runner.invoke(cli, ["search", str(ix), "--id", "3"])
    assert result.exit_code == 6 and "format 99" in result.output  # a newer embedkit's index: incompatible


# ---------------------------------------------------------------------------------------------- format 1


def test_format_1_index_is_still_read_and_add_rewrites_it(ix, tmp_path):
    expected = _ids(ix)
    _to_format_1(ix)
    assert _assert_complete(ix) == expected
    assert Index.load(ix).kind == "flat"
    result = CliRunner().invoke(cli, ["index", "add", str(ix), str(_batch(tmp_path, "more.parquet", 10_000)), "-q"])
    assert result.exit_code == 0, result.output
    assert _assert_complete(ix) == expected | set(range(10_000, 10_000 + N_BATCH))
    meta = _meta(ix)
    assert meta["format"] == 2 and meta["index_kind"] == "flat" and meta["generation"] == 1
    assert sorted(p.name for p in ix.iterdir()) == ["ids.parquet", "index.faiss", "index.json"]


# ---------------------------------------------------------------------------------------------- NaN / Inf rows


def _raw_features(path: Path, x: np.ndarray, ids) -> Path:
    """A features file holding ``x`` exactly (embed's own writer would turn NaN into 0)."""
    flat = pa.array(x.reshape(-1).astype(np.float32))
    table = pa.table(
        {
            "id": pa.array(ids),
            "text": [f"row {i}" for i in ids],
            "embedding": pa.FixedSizeListArray.from_arrays(flat, x.shape[1]),
        }
    )
    config = ExtractConfig(model="synthetic", layers=(2,), max_length=64, stride=8)  # as test_index.write_vectors
    meta = {"format_version": 1, "config": config.to_dict()}
    pq.write_table(table.cast(with_metadata(table.schema, meta)), path)
    return path


def test_nan_and_inf_rows_are_skipped_and_counted(tmp_path):
    x = clustered(100)
    x[3, 0], x[7, 5], x[11] = np.nan, np.inf, np.finfo(np.float32).max  # the last: embed's stand-in for inf
    features = _raw_features(tmp_path / "f.parquet", x, list(range(100)))
    runner = CliRunner()
    result = runner.invoke(cli, ["index", "build", str(features), "-o", str(tmp_path / "ix"), "--kind", "flat", "-q"])
    assert result.exit_code == 0, result.output
    assert "3 rows whose embedding holds NaN, infinite or overflowing values skipped" in result.output
    assert "ids 3, 7, 11)" in result.output
    report = json.loads(
        runner.invoke(
            cli, ["index", "build", str(features), "-o", str(tmp_path / "ix2"), "--kind", "hnsw", "--json", "-q"]
        ).stdout
    )
    assert report["rows"] == 97 and report["skipped_nonfinite_rows"] == 3 and report["skipped_null_rows"] == 0
    assert report["skipped_nonfinite_ids"] == [3, 7, 11]
    assert _assert_complete(tmp_path / "ix") == set(range(100)) - {3, 7, 11}
    index = Index.load(tmp_path / "ix")
    assert index.search(x[:1], k=97).positions.min() >= 0  # every indexed row can be returned

    more = clustered(20, seed=3)
    more[4, 2] = -np.inf
    result = runner.invoke(
        cli,
        [
            "index",
            "add",
            str(tmp_path / "ix"),
            str(_raw_features(tmp_path / "m.parquet", more, list(range(500, 520)))),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "added 19 rows" in result.output and "1 rows whose embedding holds NaN" in result.output
    assert 504 not in _assert_complete(tmp_path / "ix")

    bad = _raw_features(tmp_path / "bad.parquet", np.full((5, 16), np.nan, np.float32), list(range(900, 905)))
    for args in (
        ["index", "build", str(bad), "-o", str(tmp_path / "ix3")],
        ["index", "add", str(tmp_path / "ix"), str(bad)],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 3 and "5 hold NaN" in result.output, result.output
    with pytest.raises(InputError, match="NaN"):
        index.search(np.full((1, 16), np.nan, np.float32))


# ---------------------------------------------------------------------------------------------- locks


HOLD = (
    "import sys\nfrom embedkit import artefact\nwith artefact.output_lock(sys.argv[1]):\n"
    "    print('held', flush=True)\n    sys.stdin.read()\n"
)


def test_a_busy_index_or_hits_file_fails_at_once_with_exit_7_and_waits_with_wait(ix, tmp_path, write_csv):
    more = _batch(tmp_path, "more.parquet", 10_000)
    features = write_vectors(tmp_path / "f.parquet", clustered(50, seed=5), ids=np.arange(5000, 5050))
    queries = write_csv([{"text": "x"}], name="q.csv")
    runner = CliRunner()
    holder, waiting = _popen(ix, script=HOLD), None
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _snapshot(ix)
        for args in (
            ["index", "add", str(ix), str(more)],
            ["index", "build", str(features), "-o", str(ix), "--overwrite"],
        ):
            started = time.monotonic()
            result = runner.invoke(cli, args)
            assert result.exit_code == 7 and "--wait" in result.output, result.output
            assert time.monotonic() - started < 10
        assert _snapshot(ix) == before
        waiting = _popen("index", "add", ix, more, "--wait", "-q")
        time.sleep(3)
        assert waiting.poll() is None  # still waiting for the lock
    finally:
        holder.stdin.close()
        holder.wait(30)
    _, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    assert _ids(ix) == set(range(N_BASE)) | set(range(10_000, 10_000 + N_BATCH))

    hits = tmp_path / "hits.parquet"
    holder = _popen(hits, script=HOLD)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = runner.invoke(cli, ["search", str(ix), "--queries", str(queries), "-o", str(hits), "-q"])
        assert result.exit_code == 7 and not hits.exists(), result.output
    finally:
        holder.stdin.close()
        holder.wait(30)


def test_search_hits_file_is_not_written_into_the_index_or_over_the_queries(ix, tmp_path, write_csv):
    queries = write_csv([{"text": "x"}], name="q.csv")
    runner = CliRunner()
    (ix / "sub").mkdir()
    before = _snapshot(tmp_path)
    for output in (ix / "hits.parquet", ix / "sub" / "hits.parquet", queries):
        result = runner.invoke(cli, ["search", str(ix), "--queries", str(queries), "-o", str(output), "--overwrite"])
        assert result.exit_code == 5, result.output
    assert _snapshot(tmp_path) == before


def test_build_never_replaces_a_directory_that_is_not_an_index(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    features = write_vectors(tmp_path / "f.parquet", clustered(30))
    result = CliRunner().invoke(cli, ["index", "build", str(features), "-o", str(mine), "--overwrite"])
    assert result.exit_code == 5 and "refusing" in result.output, result.output
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and not _leftovers(tmp_path, "mine")


def test_the_index_directory_can_be_named_dot(ix, tmp_path, monkeypatch):
    more = _batch(tmp_path, "more.parquet", 10_000)
    monkeypatch.chdir(ix)  # `embedkit index add . more.parquet` from inside the index
    result = CliRunner().invoke(cli, ["index", "add", ".", str(more), "-q"])
    assert result.exit_code == 0, result.output
    monkeypatch.chdir(tmp_path)  # the old directory was switched out from under the working directory
    assert _assert_complete(ix) == set(range(N_BASE)) | set(range(10_000, 10_000 + N_BATCH))
    assert sorted(p.name for p in ix.iterdir()) == ["ids.parquet", "index.faiss", "index.json"]  # no lock inside


# ---------------------------------------------------------------------------------------------- races


@pytest.mark.parametrize("wait", [True, False])
def test_concurrent_adds_never_lose_a_row(ix, tmp_path, wait):
    expected = set(range(N_BASE))
    for trial in range(3):
        starts = [20_000 + 1000 * (2 * trial + j) for j in (0, 1)]
        batches = [_batch(tmp_path, f"b{trial}-{j}.parquet", s) for j, s in enumerate(starts)]
        procs = [_popen("index", "add", ix, b, "-q", *(["--wait"] if wait else [])) for b in batches]
        codes = [p.wait(120) for p in procs]
        errors = [p.stderr.read() for p in procs]
        assert set(codes) <= ({0} if wait else {0, 7}) and 0 in codes, (codes, errors)
        for code, start, error in zip(codes, starts, errors):
            if code == 0:
                expected |= set(range(start, start + N_BATCH))
            else:
                assert "--wait" in error
        assert _assert_complete(ix) == expected  # every batch that exited 0 is there, whole; nothing else
        assert not _leftovers(tmp_path, "ix")


def test_concurrent_overwrite_builds_leave_one_complete_index(tmp_path):
    a = write_vectors(tmp_path / "a.parquet", clustered(600, seed=1))
    b = write_vectors(tmp_path / "b.parquet", clustered(900, seed=2), ids=np.arange(10_000, 10_900))
    sets = {0: set(range(600)), 1: set(range(10_000, 10_900))}
    build_index(a, tmp_path / "ix", kind="flat")
    for _ in range(3):
        procs = [
            _popen("index", "build", f, "-o", tmp_path / "ix", "--overwrite", "--kind", "hnsw", "-q") for f in (a, b)
        ]
        codes = [p.wait(120) for p in procs]
        assert set(codes) <= {0, 7} and 0 in codes, (codes, [p.stderr.read() for p in procs])
        assert _assert_complete(tmp_path / "ix") in [sets[i] for i, c in enumerate(codes) if c == 0]
        assert not _leftovers(tmp_path, "ix")


# ---------------------------------------------------------------------------------------------- kill -9


BUILD_LOOP = """
import sys
from embedkit.index import build_index
files = sys.argv[2:]
print("ready", flush=True)
for i in range(10**6):
    build_index(files[i % 2], sys.argv[1], kind="hnsw", overwrite=True)
"""

ADD_LOOP = """
import sys
from embedkit.index import add_to_index
print("ready", flush=True)
for path in sys.argv[2:]:
    add_to_index(sys.argv[1], path)
"""


def _kill_after(proc: subprocess.Popen, delay: float) -> None:
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    time.sleep(delay)
    proc.kill()  # SIGKILL: no cleanup runs
    proc.wait(30)


def test_kill_during_overwrite_build_leaves_the_old_or_the_new_index(tmp_path):
    a = write_vectors(tmp_path / "a.parquet", clustered(1500, seed=1))
    b = write_vectors(tmp_path / "b.parquet", clustered(2500, seed=2), ids=np.arange(10_000, 12_500))
    complete = [set(range(1500)), set(range(10_000, 12_500))]
    build_index(a, tmp_path / "ix", kind="flat")
    rng = random.Random(15)
    for trial in range(6):
        _kill_after(_popen(tmp_path / "ix", a, b, script=BUILD_LOOP), 0.1 + 0.25 * trial + rng.random() * 0.2)
        assert _assert_complete(tmp_path / "ix") in complete
        build_index(b, tmp_path / "ix", kind="flat", overwrite=True)  # the next writer cleans what was left
        assert not _leftovers(tmp_path, "ix")
        assert _assert_complete(tmp_path / "ix") == complete[1]


def test_kill_during_add_leaves_whole_batches_only(ix, tmp_path):
    expected = set(range(N_BASE))
    rng = random.Random(15)
    for trial in range(6):
        starts = [100_000 * (trial + 1) + 100 * j for j in range(30)]
        batches = [_batch(tmp_path, f"b{trial}-{j}.parquet", start) for j, start in enumerate(starts)]
        _kill_after(_popen(ix, *batches, script=ADD_LOOP), 0.1 + 0.3 * trial + rng.random() * 0.2)
        ids = _assert_complete(ix)
        done = (len(ids) - len(expected)) // N_BATCH  # the loop adds in order: whole batches, a prefix of them
        assert ids == expected.union(*(range(start, start + N_BATCH) for start in starts[:done]))
        # The next add cleans what the killed one left and builds on the last complete generation.
        extra = 900_000 + 100 * trial
        _, report = add_to_index(ix, _batch(tmp_path, f"extra{trial}.parquet", extra))
        assert report.added == N_BATCH and not _leftovers(tmp_path, "ix")
        expected = ids | set(range(extra, extra + N_BATCH))
        assert _assert_complete(ix) == expected


def test_readers_during_adds_see_one_complete_generation(ix, tmp_path):
    starts = [500_000 + 100 * j for j in range(40)]
    adder = _popen(ix, *[_batch(tmp_path, f"r{j}.parquet", start) for j, start in enumerate(starts)], script=ADD_LOOP)
    try:
        assert adder.stdout.readline().strip() == "ready"
        sizes = []
        while adder.poll() is None:
            ids = _assert_complete(ix)  # no lock: a switch under the reader makes it read again, never fail
            assert (len(ids) - N_BASE) % N_BATCH == 0
            sizes.append(len(ids))
    finally:
        adder.kill()
        adder.wait(30)
    assert adder.returncode == 0, adder.stderr.read()
    assert sizes == sorted(sizes) and len(set(sizes)) > 3  # the reads really overlapped the adds
    assert _ids(ix) == set(range(N_BASE)).union(*(range(s, s + N_BATCH) for s in starts))
