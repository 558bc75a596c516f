"""Sharded features datasets (embedkit.dataset): write, finish, read back, resume, tampering, two writers."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedkit.dataset import MANIFEST_NAME, DatasetWriter, is_dataset, read_manifest, write_shard
from embedkit.errors import BusyError, IncompatibleError, InputError, OutputError
from embedkit.store import ShardedFeatures, describe, open_features, read_metadata

FP = {"settings": {"layers": [-1]}, "part_rows": 7}


def _shards(table: pa.Table, rows: int) -> list[pa.Table]:
    return [table.slice(i, rows) for i in range(0, table.num_rows, rows)]


def _write_dataset(single: Path, out: Path, rows: int = 7) -> pa.Table:
    table = pq.read_table(single).replace_schema_metadata(None)
    with DatasetWriter(out, FP) as writer:
        for i, shard in enumerate(_shards(table, rows)):
            writer.record(write_shard(writer.staging, i, shard))
        assert writer.finish(read_metadata(single)) == table.num_rows
    return table


def test_write_finish_and_read_back_as_one_file(features_file, tmp_path):
    single = features_file(n=30)
    out = tmp_path / "ds"
    table = _write_dataset(single, out)
    assert is_dataset(out) and not is_dataset(single)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, *(f"part-{i:05d}.parquet" for i in range(5))]
    assert not (tmp_path / "ds.partial").exists()
    manifest = read_manifest(out)
    assert manifest.rows == 30 and [s.rows for s in manifest.shards] == [7, 7, 7, 7, 2]

    feats, ref = open_features(out), open_features(single)
    assert isinstance(feats, ShardedFeatures) and feats.num_rows == 30 and feats.shards == 5
    assert feats.config == ref.config and feats.embedding_columns == ref.embedding_columns
    m, ids, skipped = feats.load(extra=["label"])
    m_ref, ids_ref, skipped_ref = ref.load(extra=["label"])
    np.testing.assert_array_equal(m, m_ref)
    assert ids.to_pylist() == ids_ref.to_pylist() and skipped == skipped_ref
    batches = list(feats.iter_batches(batch_rows=5))
    assert max(len(b[0]) for b in batches) <= 5  # streamed, never more than a batch of one shard at a time
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), m_ref)
    assert describe(out)["rows"] == 30 and describe(out)["shards"] == 5
    assert describe(out)["status_counts"] == describe(single)["status_counts"]
    # Readable as-is by other tools: the manifest's leading underscore keeps pyarrow/pandas from reading it.
    assert pq.read_table(out).num_rows == 30
    assert table.column("id").to_pylist() == pq.read_table(out).column("id").to_pylist()


def test_resume_keeps_verified_shards_and_redoes_missing_and_corrupt_ones(features_file, tmp_path):
    single = features_file(n=30)
    table = pq.read_table(single).replace_schema_metadata(None)
    shards = _shards(table, 7)
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="killed"):
        with DatasetWriter(out, FP) as writer:
            for i in range(4):
                writer.record(write_shard(writer.staging, i, shards[i]))
            raise RuntimeError("killed")
    staging = tmp_path / "ds.partial"
    assert staging.is_dir() and not out.exists()
    raw = bytearray((staging / "part-00001.parquet").read_bytes())
    raw[100] ^= 0xFF  # corrupt shard 1
    (staging / "part-00001.parquet").write_bytes(bytes(raw))
    (staging / "part-00002.parquet").unlink()  # shard 2 gone
    (staging / ".part-00004.parquet.abcd1234.tmp").write_bytes(b"half")  # a killed worker's temp file

    with pytest.raises(OutputError, match="--resume"):
        DatasetWriter(out, FP)
    with pytest.raises(IncompatibleError, match="part_rows"):
        DatasetWriter(out, {**FP, "part_rows": 8}, resume=True)
    with DatasetWriter(out, FP, resume=True) as writer:
        assert sorted(writer.done()) == [0, 3]
        assert not (staging / ".part-00004.parquet.abcd1234.tmp").exists()
        for i, shard in enumerate(shards):
            if i not in writer.done():
                writer.record(write_shard(writer.staging, i, shard))
        assert writer.finish(read_metadata(single)) == 30
    back = pq.read_table(out)
    assert back.column("id").to_pylist() == table.column("id").to_pylist()
    # Resumed after the end: nothing to do, nothing changes.
    with DatasetWriter(out, FP, resume=True) as writer:
        assert writer.complete
    with pytest.raises(OutputError, match="--overwrite"):
        DatasetWriter(out, FP)


def test_finish_refuses_a_gap(features_file, tmp_path):
    single = features_file(n=20)
    table = pq.read_table(single).replace_schema_metadata(None)
    with DatasetWriter(tmp_path / "ds", FP) as writer:
        writer.record(write_shard(writer.staging, 0, table.slice(0, 7)))
        writer.record(write_shard(writer.staging, 2, table.slice(14)))
        with pytest.raises(OutputError, match="shard.* 1 were never recorded"):
            writer.finish(read_metadata(single))
    assert not (tmp_path / "ds").exists()


def test_shards_with_different_schemas_are_unified(features_file, tmp_path):
    single = features_file(n=14)
    table = pq.read_table(single).replace_schema_metadata(None)
    first = table.slice(0, 7).set_column(
        table.schema.get_field_index("label"), "label", pa.nulls(7, pa.null())
    )  # a passthrough column all null in one shard
    with DatasetWriter(tmp_path / "ds", FP) as writer:
        writer.record(write_shard(writer.staging, 0, first))
        writer.record(write_shard(writer.staging, 1, table.slice(7)))
        writer.finish(read_metadata(single))
    back = pq.read_table(tmp_path / "ds")
    assert back.schema.field("label").type == pa.string()
    assert back.column("label").to_pylist() == [None] * 7 + table.column("label").to_pylist()[7:]


@pytest.mark.parametrize("name", ["../x.parquet", "/etc/passwd", "part-00001.parquet", "a/../part-00000.parquet"])
def test_a_tampered_shard_name_is_refused(features_file, tmp_path, name):
    out = tmp_path / "ds"
    _write_dataset(features_file(n=10), out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["shards"][0]["file"] = name
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="corrupt or was edited"):
        open_features(out)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["shards"].pop(),  # rows no longer add up
        lambda m: m.update(rows=10**12),
        lambda m: m["shards"][0].update(rows="7"),
        lambda m: m["shards"][0].update(sha256="0" * 63),
        lambda m: m.update(extra="x"),
        lambda m: m.update(kind="embedkit-index"),
    ],
)
def test_an_edited_manifest_is_refused(features_file, tmp_path, edit):
    out = tmp_path / "ds"
    _write_dataset(features_file(n=10), out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    edit(manifest)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(InputError):
        open_features(out)


def test_a_missing_or_modified_shard_is_a_clear_error(features_file, tmp_path):
    out = tmp_path / "ds"
    _write_dataset(features_file(n=20), out)
    (out / "part-00002.parquet").unlink()
    with pytest.raises(InputError, match="part-00002.parquet is missing"):
        open_features(out)
    out2 = tmp_path / "ds2"
    _write_dataset(features_file(n=20, name="f2.parquet"), out2)
    path = out2 / "part-00001.parquet"
    raw = bytearray(path.read_bytes())
    raw[50] ^= 0xFF  # same size, other bytes: found when the shard is about to be read
    path.write_bytes(bytes(raw))
    feats = open_features(out2)
    with pytest.raises(InputError, match="sha256"):
        feats.load()


def test_cli_refuses_a_tampered_dataset_cleanly(features_file, tmp_path):
    from click.testing import CliRunner

    from embedkit.cli import cli

    out = tmp_path / "ds"
    _write_dataset(features_file(n=10), out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["shards"][0]["file"] = "../x"
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    result = CliRunner().invoke(cli, ["info", str(out)])
    assert result.exit_code == InputError.exit_code, result.output
    assert "corrupt or was edited" in result.output and "Traceback" not in result.output


def _hold_writer(target: str, ready, release) -> None:
    with DatasetWriter(Path(target), FP):
        ready.set()
        release.wait(30)


def test_two_writers_of_one_output_one_fails_cleanly(tmp_path):
    target = tmp_path / "ds"
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_writer, args=(str(target), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(BusyError, match="another embedkit process"):
            DatasetWriter(target, FP)
    finally:
        release.set()
        holder.join(30)
    with DatasetWriter(target, FP, resume=True) as writer:  # the lock is free again; its staging is resumable
        assert writer.done() == {}


def test_output_that_is_not_a_dataset_is_never_replaced(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not empty"):
        DatasetWriter(tmp_path / "mine", FP, overwrite=True)
    (tmp_path / "file.parquet").write_text("x")
    with pytest.raises(OutputError, match="not a directory"):
        DatasetWriter(tmp_path / "file.parquet", FP)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_failed_job_without_any_shard_leaves_nothing_to_resume(tmp_path):
    with pytest.raises(RuntimeError):
        with DatasetWriter(tmp_path / "ds", FP):
            raise RuntimeError("failed before the first shard")
    assert not (tmp_path / "ds.partial").exists()
    DatasetWriter(tmp_path / "ds", FP).close()  # no "a partial run exists"


def test_a_refused_resume_keeps_the_partial_run(features_file, tmp_path):
    single = features_file(n=10)
    with pytest.raises(RuntimeError):
        with DatasetWriter(tmp_path / "ds", FP) as writer:
            writer.record(write_shard(writer.staging, 0, pq.read_table(single)))
            raise RuntimeError("killed")
    with pytest.raises(IncompatibleError):
        with DatasetWriter(tmp_path / "ds") as writer:
            writer.start({**FP, "part_rows": 3}, resume=True)
    with DatasetWriter(tmp_path / "ds", FP, resume=True) as writer:
        assert list(writer.done()) == [0]


def test_finish_without_checksums_reads_no_shard_data_and_readers_still_check(features_file, tmp_path, monkeypatch):
    from embedkit import artefact

    single = features_file(n=14)
    table = pq.read_table(single).replace_schema_metadata(None)
    with DatasetWriter(tmp_path / "ds", FP) as writer:
        for i, shard in enumerate(_shards(table, 7)):
            writer.record(write_shard(writer.staging, i, shard))
        hashed: list[Path] = []
        real = artefact.sha256_file
        monkeypatch.setattr(artefact, "sha256_file", lambda p: (hashed.append(p), real(p))[1])
        writer.finish(read_metadata(single), verify_checksums=False)
        assert [p for p in hashed if p.suffix == ".parquet"] == []
    path = tmp_path / "ds" / "part-00001.parquet"
    raw = bytearray(path.read_bytes())
    raw[50] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="sha256"):
        open_features(tmp_path / "ds").load()


def _int8_shards(out: Path) -> tuple[DatasetWriter, dict]:
    """A dataset writer holding 3 float32 shards of an int8-mode job (the third with a column all null)."""
    rng = np.random.default_rng(0)
    writer = DatasetWriter(out, FP)
    for i in range(3):
        vectors = rng.normal(size=(5, 4)).astype(np.float32) * (i + 1)
        note = pa.nulls(5) if i == 2 else pa.array([f"n{j}" for j in range(5)])
        table = pa.table(
            {
                "id": pa.array(range(5 * i, 5 * i + 5)),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 4),
                "note": note,
            }
        )
        writer.record(write_shard(writer.staging, i, table))
    return writer, {"config": {"dtype": "int8"}, "columns": {"embeddings": ["embedding"]}}


def _in_other_processes(fn, items):
    """A map_shards that runs the per-shard work in fresh processes (spawned: none of this test's patches)."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, *zip(*items)))


def test_finish_can_run_its_shard_work_elsewhere_and_reads_no_shard_here(tmp_path, monkeypatch):
    """What the Ray engine relies on: with map_shards, the checks, int8 maxima and rewrites happen in the workers,
    and the result is the same dataset as finishing in this process."""
    writer, meta = _int8_shards(tmp_path / "here")
    with writer:
        writer.finish(meta)
    here = read_manifest(tmp_path / "here")

    writer, meta = _int8_shards(tmp_path / "there")
    with writer:
        staging = str(writer.staging)

        def refuse(name):
            real = getattr(pq, name)

            def guarded(source, *args, **kwargs):
                assert not str(source).startswith(staging), f"the driver read {source} with pq.{name}"
                return real(source, *args, **kwargs)

            monkeypatch.setattr(pq, name, guarded)

        for name in ("read_table", "read_metadata", "read_schema", "ParquetFile"):
            refuse(name)
        writer.finish(meta, map_shards=_in_other_processes)
        monkeypatch.undo()
    there = read_manifest(tmp_path / "there")
    assert there.features == here.features and there.features["vectors"]["embedding"]["scale"]
    assert [s.sha256 for s in there.shards] == [s.sha256 for s in here.shards]
    table = pa.concat_tables([pq.read_table(tmp_path / "there" / s.file) for s in there.shards])
    assert table.schema.field("embedding").type.value_type == pa.int8()
    assert table.column("note").to_pylist()[-5:] == [None] * 5


def test_finish_elsewhere_reports_a_corrupt_shard(tmp_path):
    writer, meta = _int8_shards(tmp_path / "ds")
    with writer:
        (writer.staging / "part-00001.parquet").write_bytes(b"PAR1 not really")
        with pytest.raises(InputError, match="part-00001"):
            writer.finish(meta, verify_checksums=False, map_shards=_in_other_processes)


def test_the_journal_grows_by_one_line_per_shard_and_a_torn_line_is_redone(features_file, tmp_path):
    """Recording a shard appends one line (the journal is not rewritten per shard: that was quadratic in shards);
    a kill while a line was being written leaves a torn line, and that shard is redone on resume."""
    single = features_file(n=21)
    table = pq.read_table(single).replace_schema_metadata(None)
    journal = tmp_path / "ds.partial" / "_journal.jsonl"
    with pytest.raises(RuntimeError, match="killed"):
        with DatasetWriter(tmp_path / "ds", FP) as writer:
            for i, shard in enumerate(_shards(table, 7)[:2]):
                before = journal.read_bytes()
                writer.record(write_shard(writer.staging, i, shard))
                assert journal.read_bytes().startswith(before) and journal.read_text().count("\n") == i + 2
            write_shard(writer.staging, 2, _shards(table, 7)[2])
            with journal.open("a") as f:
                f.write('{"index": 2, "file": "part-00002.parq')  # the kill lands mid-line
            raise RuntimeError("killed")
    with DatasetWriter(tmp_path / "ds", FP, resume=True) as writer:
        assert sorted(writer.done()) == [0, 1]
        writer.record(write_shard(writer.staging, 2, _shards(table, 7)[2]))
        assert writer.finish(read_metadata(single)) == 21
    assert read_manifest(tmp_path / "ds").rows == 21
