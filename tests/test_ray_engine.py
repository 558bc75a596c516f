"""The Ray Data engine against a real local Ray instance (2 CPUs, shared by the session).

Every Ray run starts fresh actors that import torch, so the file keeps to few runs: one through the CLI
(compared in detail with the local engine) and the halves of a failed-then-resumed run. The multi-node cluster
and a worker node killed mid-job are in test_ray_cluster.py.
"""

from __future__ import annotations

import json
import socket
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray", reason="the Ray engine needs the ray extra: pip install -e '.[dev]'")

from conftest import sample_texts  # noqa: E402

from embedkit import ExtractConfig, IncompatibleError, InputError, OutputError  # noqa: E402
from embedkit.cli import cli  # noqa: E402
from embedkit.embed import embed, embed_file  # noqa: E402
from embedkit.engines import ray as ray_engine  # noqa: E402
from embedkit.engines.ray import RayEngine, read, worker  # noqa: E402
from embedkit.engines.ray.plan import spec_to_dict  # noqa: E402
from embedkit.spec import InputSpec, Runtime  # noqa: E402
from embedkit.store import open_features  # noqa: E402

LAYERS_POOLINGS = ["--layer", "1", "--layer", "-1", "--pooling", "mean,last"]


@pytest.fixture(scope="session")
def ray_cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


def _csv_with_bad_rows(path):
    """150 rows: texts with an empty one, non-ASCII, and a malformed line (too many fields) at the end."""
    texts = sample_texts(149, seed=3)
    texts[7] = ""
    texts[20] = "Ünïcödé 漢字 and emoji 😀"
    lines = ["text,label"] + [f'"{t}",{i % 3}' for i, t in enumerate(texts)] + ['"broken",1,extra,fields']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ray_and_local(tiny_gpt2_shared, tmp_path_factory, ray_cluster):
    """The same CSV embedded by `embedkit embed --engine ray` (4 parts, 2 workers) and by the local engine."""
    root = tmp_path_factory.mktemp("ray")
    source = _csv_with_bad_rows(root / "in.csv")
    mp = pytest.MonkeyPatch()
    mp.setattr(ray_engine, "RAY_PART_ROWS", 40)  # several shards, so both workers get some and order is tested
    try:
        result = CliRunner().invoke(
            cli,
            [
                "embed",
                source.as_uri(),  # a file:// URI: read as the path it names
                "-o",
                str(root / "ray"),
                "--model",
                tiny_gpt2_shared,
                "--keep",
                "label",
                "--engine",
                "ray",
                "--workers",
                "2",
                "--device",
                "cpu",
                "-q",
                *LAYERS_POOLINGS,
            ],
        )
    finally:
        mp.undo()
    assert result.exit_code == 0, result.output
    config = ExtractConfig(model=tiny_gpt2_shared, layers=(1, -1), pooling=("mean", "last"))
    embed_file(source, root / "local.parquet", config, keep=["label"], device="cpu", progress=False)
    return root / "ray", root / "local.parquet", result.output


def test_ray_output_equals_local_engine(ray_and_local):
    ray_out, local_out, summary = ray_and_local
    a, b = read_dataset(ray_out), pq.read_table(local_out)
    assert "150 rows" in summary
    assert a.schema.remove_metadata() == b.schema.remove_metadata()
    assert a.column("id").to_pylist() == list(range(150))
    for column in ("id", "text", "label", "n_tokens", "n_windows", "truncated", "status", "error"):
        assert a.column(column).to_pylist() == b.column(column).to_pylist(), column
    for column in ("embedding_l1_mean", "embedding_l1_last", "embedding_l2_mean", "embedding_l2_last"):
        x, y = a.column(column).to_pylist(), b.column(column).to_pylist()
        assert [v is None for v in x] == [v is None for v in y]
        np.testing.assert_allclose(
            np.array([v for v in x if v is not None]), np.array([v for v in y if v is not None]), atol=1e-5
        )


def test_ray_keeps_bad_rows_with_their_status(ray_and_local):
    rows = read_dataset(ray_and_local[0], columns=["id", "status", "error", "embedding_l2_mean"]).to_pylist()
    assert rows[7]["status"] == "empty" and rows[7]["embedding_l2_mean"] is None
    assert rows[149]["status"] == "malformed" and "fields" in rows[149]["error"]
    assert rows[20]["status"] == "ok" and rows[20]["embedding_l2_mean"] is not None


def test_ray_metadata_equals_local(ray_and_local):
    ray_meta, local_meta = (open_features(p).meta for p in ray_and_local[:2])
    for meta in (ray_meta, local_meta):
        meta.pop("created_at")
    assert ray_meta == local_meta


def test_ray_output_reads_downstream_and_in_info(ray_and_local):
    features = open_features(ray_and_local[0])
    matrix, table, skipped = features.load("embedding_l2_mean", extra=["label"])
    assert matrix.shape == (148, 32) and skipped == 2 and table.num_rows == 148
    result = CliRunner().invoke(cli, ["info", str(ray_and_local[0]), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["rows"] == 150 and info["status_counts"] == {"ok": 148, "empty": 1, "malformed": 1}


def read_dataset(path, columns=None):
    """A sharded dataset's rows in shard order, as one table."""
    from embedkit.dataset import read_manifest

    return pa.concat_tables([pq.read_table(path / s.file, columns=columns) for s in read_manifest(path).shards])


def run_ray(source, out, config, **options):
    spec = InputSpec(source, id_column=options.pop("id_column", None))
    engine = RayEngine(workers=options.pop("workers", 1))
    return embed(spec, out, config, Runtime(device="cpu", progress=False), engine=engine, part_rows=20, **options)


def test_ray_resume_redoes_only_missing_shards(tiny_gpt2_shared, tmp_path, monkeypatch, ray_cluster):
    from embedkit import dataset

    source = tmp_path / "in.jsonl"
    lines = [json.dumps({"doc": f"d{i}", "text": t}) for i, t in enumerate(sample_texts(100, seed=5))]
    source.write_text("\n".join(lines[:50] + ["{not json"] + lines[50:]) + "\n", encoding="utf-8")
    out, config = tmp_path / "out", ExtractConfig(model=tiny_gpt2_shared)

    record, calls = dataset.DatasetWriter.record, []

    def record_then_crash(self, info):  # the driver dies after recording two shards
        calls.append(info["index"])
        if len(calls) == 3:
            raise KeyboardInterrupt("driver killed (simulated)")
        record(self, info)

    monkeypatch.setattr(dataset.DatasetWriter, "record", record_then_crash)
    with pytest.raises(KeyboardInterrupt, match="simulated"):
        run_ray(source, out, config, id_column="doc")
    monkeypatch.setattr(dataset.DatasetWriter, "record", record)
    recorded = set(calls[:2])

    sent, real_embed = [], RayEngine._embed

    def spying_embed(self, ray, spec, files, config, runtime, writer, todo, *rest):
        sent.extend(s.index for s in todo)
        return real_embed(self, ray, spec, files, config, runtime, writer, todo, *rest)

    monkeypatch.setattr(RayEngine, "_embed", spying_embed)
    with pytest.raises(IncompatibleError):  # other settings cannot continue the partial run
        run_ray(source, out, ExtractConfig(model=tiny_gpt2_shared, pooling=("last",)), id_column="doc", resume=True)
    assert sent == []
    summary = run_ray(source, out, config, id_column="doc", resume=True)
    assert sorted(sent) == sorted(set(range(6)) - recorded)  # 101 rows in shards of 20
    assert summary.rows == 101 and summary.resumed_rows == 40 and summary.bad_rows == {"malformed": 1}

    embed_file(source, tmp_path / "local.parquet", config, id_column="doc", device="cpu", progress=False)
    a, b = read_dataset(out), pq.read_table(tmp_path / "local.parquet")
    assert a.column("id").to_pylist() == b.column("id").to_pylist()
    assert a.column("status").to_pylist() == b.column("status").to_pylist()
    x, y = (np.array([v for v in t.column("embedding").to_pylist() if v is not None]) for t in (a, b))
    np.testing.assert_allclose(x, y, atol=1e-5)


def test_shards_are_fixed_row_ranges_of_one_file():
    shards = ray_engine.plan([45, 0, 20], 20)
    assert [(s.index, s.file, s.start, s.stop, s.first_row) for s in shards] == [
        (0, 0, 0, 20, 0),
        (1, 0, 20, 40, 20),
        (2, 0, 40, 45, 40),
        (3, 2, 0, 20, 45),
    ]


def test_uri_input_of_every_format_equals_the_local_engine(tiny_gpt2_shared, tmp_path, ray_cluster):
    """A directory named by an fsspec URI (``local://``: fsspec's, not pyarrow's, so the read tasks go through
    PyFileSystem(FSSpecHandler)) holding CSV, JSONL with a malformed line, Parquet and text: shards never span
    files, ids number the whole input, rows, statuses and ids are the local engine's on the plain path, and the
    written shards are the plan's even when Ray Data is set to cut blocks small."""
    folder = tmp_path / "in"
    folder.mkdir()
    texts = sample_texts(60, seed=9)
    (folder / "a.csv").write_text("text\n" + "\n".join(f'"{t}"' for t in texts[:13]) + "\n", encoding="utf-8")
    jsonl = [json.dumps({"text": t}) for t in texts[13:30]]
    jsonl[4] = '{"text": "broken'
    (folder / "b.jsonl").write_text("\n".join(jsonl) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"text": texts[30:45]}), folder / "c.parquet", row_group_size=4)
    (folder / "d.txt").write_text("\n".join(texts[45:]) + "\n\n", encoding="utf-8")  # an empty last line
    config = ExtractConfig(model=tiny_gpt2_shared)
    # Ray Data cuts read output over 1.5 x target_max_block_size into several blocks: with 1 KiB every shard here
    # would be cut (and refused by the actors) unless the engine keeps one block per shard.
    context = ray.data.DataContext.get_current()
    before, context.target_max_block_size = context.target_max_block_size, 1024
    try:
        summary = run_ray(f"local://{folder}", tmp_path / "out", config, workers=2)
    finally:
        context.target_max_block_size = before
    embed_file(folder, tmp_path / "local.parquet", config, device="cpu", progress=False)
    a, b = read_dataset(tmp_path / "out"), pq.read_table(tmp_path / "local.parquet")
    assert summary.rows == a.num_rows == b.num_rows == 61
    assert summary.bad_rows == {"malformed": 1, "empty": 1}
    for column in ("id", "text", "status", "error", "n_tokens"):
        assert a.column(column).to_pylist() == b.column(column).to_pylist(), column
    # The shards written are the plan's: fixed row ranges of one file each, 20 rows at most.
    from embedkit.dataset import read_manifest

    assert [s.rows for s in read_manifest(tmp_path / "out").shards] == [13, 17, 15, 16]


def test_an_actor_refuses_a_shard_in_pieces_and_splits_merged_ones(tmp_path, write_csv):
    """What a model actor does with a block that is not one whole shard (Ray Data re-bundling blocks)."""
    source = write_csv([{"text": f"row {i}"} for i in range(7)])
    spec = InputSpec(source)
    first, second = ray_engine.plan([7], 4)
    records = spec.source().read_range(0, 0, 7)
    whole = [read.shard_block(first, _slice(records, 0, 4)), read.shard_block(second, _slice(records, 4, 7))]
    merged = pa.concat_tables(whole)
    assert [(i, r.texts) for i, r in read.shards_of(merged)] == [
        (0, ["row 0", "row 1", "row 2", "row 3"]),
        (1, ["row 4", "row 5", "row 6"]),
    ]
    assert [r.row_numbers for _, r in read.shards_of(merged)] == [[0, 1, 2, 3], [4, 5, 6]]
    [(index, error)] = read.shards_of(whole[0].slice(0, 3))
    assert index == 0 and isinstance(error, OutputError) and "3 of its 4 rows" in str(error)
    actor = worker.ShardEmbedder.__new__(worker.ShardEmbedder)  # no model: the refusal comes before it
    actor.error, actor.staging = None, tmp_path
    info = json.loads(actor(whole[0].slice(1, 3))["info"][0])
    assert info["error_type"] == "OutputError" and not list(tmp_path.glob("part-*"))


def test_a_read_error_reaches_the_driver_typed(tmp_path, write_csv):
    """A read task that meets an embedkit error (here: the file lost rows since the plan) sends it in the block."""
    source = write_csv([{"text": f"row {i}"} for i in range(3)])
    shard = ray_engine.plan([5], 5)[0]  # the plan said 5 rows; the file has 3
    [block] = read.read_shard(spec_to_dict(InputSpec(source)), source, shard)
    [(index, error)] = read.shards_of(block)
    assert index == 0 and isinstance(error, InputError) and "changed during the job" in str(error)


def _slice(records, start, stop):
    from embedkit.sources import Records

    return Records(
        records.row_numbers[start:stop],
        records.texts[start:stop],
        None,
        {k: v[start:stop] for k, v in records.keep.items()},
        records.parse_errors[start:stop],
    )


def test_strict_stops_with_the_row_that_failed(tiny_gpt2_shared, write_csv, tmp_path, ray_cluster):
    source = write_csv([{"text": "fine"}, {"text": ""}, {"text": "also fine"}])
    with pytest.raises(InputError, match="row 1 .* is empty"):
        run_ray(source, tmp_path / "out", ExtractConfig(model=tiny_gpt2_shared), strict=True)


def test_worker_error_reaches_the_driver_typed(tmp_path, write_csv):
    source = write_csv([{"text": "a text"}])
    config = ExtractConfig(model=str(tmp_path / "no-such-model")).to_dict()
    spec = {
        "path": str(source),
        "format": None,
        "text_column": "text",
        "id_column": None,
        "keep": [],
        "keep_text": True,
    }
    actor = worker.ShardEmbedder(spec, config, "cpu", None, None, str(tmp_path))
    [block] = read.read_shard(spec, source, ray_engine.plan([1], 10)[0])
    info = json.loads(actor(block)["info"][0])
    assert info["error_type"] == "ModelLoadError" and not list(tmp_path.glob("part-*"))


def test_an_input_in_process_memory_is_refused_before_ray_starts(tiny_gpt2_shared, tmp_path):
    fsspec = pytest.importorskip("fsspec")
    fsspec.filesystem("memory").pipe("/embedkit-ray-refused/in.txt", b"a text\n")
    with pytest.raises(ray_engine.ConfigError, match="Ray workers cannot read"):
        run_ray("memory:///embedkit-ray-refused/in.txt", tmp_path / "out", ExtractConfig(model=tiny_gpt2_shared))
    assert not (tmp_path / "out").exists()


def test_single_file_output_is_refused_with_the_directory_to_use(tiny_gpt2_shared, write_csv, tmp_path):
    source = write_csv([{"text": "hello"}])
    out = tmp_path / "o.parquet"
    result = CliRunner().invoke(
        cli, ["embed", str(source), "-o", str(out), "--model", tiny_gpt2_shared, "--engine", "ray"]
    )
    assert result.exit_code == 2 and f"-o {tmp_path / 'o'}/" in result.output
    assert not out.exists()


@pytest.mark.parametrize("value, expected", [("3", 3), ("2:8", (2, 8)), (None, None)])
def test_workers_take_a_count_or_a_range(value, expected):
    assert ray_engine.parse_workers(value) == expected


@pytest.mark.parametrize("value", ["0", "3:2", "x", "1:"])
def test_bad_workers_are_config_errors(value):
    with pytest.raises(ray_engine.ConfigError):
        ray_engine.parse_workers(value)


def test_missing_ray_says_how_to_install(tiny_gpt2_shared, write_csv, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    source = write_csv([{"text": "hello"}])
    result = CliRunner().invoke(
        cli, ["embed", str(source), "-o", str(tmp_path / "o.parquet"), "--model", tiny_gpt2_shared, "--engine", "ray"]
    )
    assert result.exit_code == 2
    assert "pip install 'embedkit[ray]'" in result.output


def test_unreachable_address_fails_fast_and_leaves_nothing(tiny_gpt2_shared, write_csv, tmp_path, monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # act as a fresh process, not the test session
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source, out = write_csv([{"text": "hello"}]), tmp_path / "o"
    result = CliRunner().invoke(
        cli,
        [
            "embed",
            str(source),
            "-o",
            str(out),
            "--model",
            tiny_gpt2_shared,
            "--engine",
            "ray",
            "--ray-address",
            f"127.0.0.1:{port}",
        ],
    )
    assert result.exit_code == 2
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [source.name]  # nothing written, no staging left
    result = CliRunner().invoke(
        cli,
        [
            "embed",
            str(source),
            "-o",
            str(out),
            "--model",
            tiny_gpt2_shared,
            "--engine",
            "ray",
            "--ray-address",
            "headnode",
        ],
    )
    assert result.exit_code == 2 and "HOST:PORT" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workers", "2"], "need --engine ray"),
        (["--engine", "ray", "--device", "cuda"], "needs --gpus-per-worker"),
        (["--engine", "ray", "--device", "cpu", "--gpus-per-worker", "1"], "--device is cpu"),
    ],
)
def test_contradictory_options_are_usage_errors(args, message, tiny_gpt2_shared, write_csv, tmp_path):
    source = write_csv([{"text": "hello"}])
    result = CliRunner().invoke(
        cli, ["embed", str(source), "-o", str(tmp_path / "o"), "--model", tiny_gpt2_shared, *args]
    )
    assert result.exit_code == 2
    assert message in result.output


def test_int8_gets_one_scale_from_every_shard_without_the_driver_reading_them(
    tiny_gpt2_shared, tmp_path, monkeypatch, ray_cluster
):
    """int8 shards are written as float32 and quantised at the end with one scale for the dataset; that pass runs
    as Ray tasks, as does counting the summary, so the driver reads no shard (the local engine's merge reads every
    part)."""
    source = tmp_path / "in.txt"
    source.write_text("\n".join(sample_texts(50, seed=4)) + "\n", encoding="utf-8")
    config = ExtractConfig(model=tiny_gpt2_shared, dtype="int8")
    read_here: list[str] = []
    real_read_table = pq.read_table

    def spying_read_table(source, *args, **kwargs):
        if str(source).startswith(str(tmp_path / "out")):  # its staging directory out.partial, or out itself
            read_here.append(str(source))
        return real_read_table(source, *args, **kwargs)

    monkeypatch.setattr(pq, "read_table", spying_read_table)
    run_ray(source, tmp_path / "out", config, workers=2)
    monkeypatch.undo()
    assert read_here == []
    embed_file(source, tmp_path / "local.parquet", config, device="cpu", progress=False)
    ours, local = open_features(tmp_path / "out"), open_features(tmp_path / "local.parquet")
    assert ours.schema.field("embedding").type.value_type == pa.int8()
    scale = np.array(ours.vector_encoding("embedding")["scale"])
    np.testing.assert_allclose(scale, local.vector_encoding("embedding")["scale"], rtol=1e-5)
    np.testing.assert_allclose(ours.load()[0], local.load()[0], atol=float(scale.max()) * 1.01)
