"""Regression tests for what an adversarial pass over #15 found: hostile state that embedkit reads back.

Each test hand-edits something a previous run (or another person) left on disk and checks that the command
refuses it with its documented exit code before reading anything it points at.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import sample_texts

from embedkit.cli import cli
from embedkit.parts import PartWriter

PART_ROWS = 20


class Crash(BaseException):
    """Stands for the process dying before the merge: not an Exception, so nothing on the way catches it."""


@pytest.fixture
def corpus(write_csv):
    return write_csv([{"doc": f"d{i}", "text": t} for i, t in enumerate(sample_texts(60, seed=3))], "corpus.csv")


def embed_args(corpus, out, model, *extra):
    return ["embed", str(corpus), "-o", str(out), "-m", model, "--id-column", "doc"] + [
        "--part-rows",
        str(PART_ROWS),
        "-q",
        *extra,
    ]


@pytest.fixture
def partial_run(corpus, tiny_gpt2_shared, tmp_path, monkeypatch):
    """A whole partial run (three committed parts, no merge) of ``out.parquet``; returns its manifest's path."""
    out = tmp_path / "out.parquet"
    monkeypatch.setattr(PartWriter, "finish", lambda self, meta: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        CliRunner().invoke(cli, embed_args(corpus, out, tiny_gpt2_shared), catch_exceptions=False)
    monkeypatch.undo()
    manifest = tmp_path / "out.parquet.partial" / "manifest.json"
    assert len(json.loads(manifest.read_text())["parts"]) == 3
    return manifest


def _edit(manifest, change):
    doc = json.loads(manifest.read_text())
    change(doc)
    manifest.write_text(json.dumps(doc))


def _outside_part(manifest):
    # A features file outside the partial directory, shaped like a part: what a traversal name would merge in.
    outside = manifest.parent.parent / "secret.parquet"
    shutil.copy(manifest.parent / "part-000000.parquet", outside)
    return outside


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda doc, m: doc["parts"][1].update(file="../secret.parquet"), id="traversal"),
        pytest.param(lambda doc, m: doc["parts"][1].update(file=str(_outside_part(m))), id="absolute"),
        pytest.param(lambda doc, m: doc["parts"][1].update(rows=5), id="row-count"),
        pytest.param(lambda doc, m: doc["parts"].pop(1), id="part-dropped"),
        pytest.param(lambda doc, m: doc["parts"].append(dict(doc["parts"][0])), id="part-repeated"),
        pytest.param(lambda doc, m: doc["parts"][0].update(rows=True), id="rows-bool"),
        pytest.param(lambda doc, m: doc.update(parts={"file": "x"}), id="parts-not-a-list"),
        pytest.param(lambda doc, m: doc["parts"].__setitem__(0, "part-000000.parquet"), id="part-not-an-object"),
        pytest.param(lambda doc, m: doc.pop("fingerprint"), id="no-fingerprint"),
    ],
)
def test_a_hand_edited_resume_manifest_is_refused(partial_run, corpus, tiny_gpt2_shared, edit):
    _outside_part(partial_run)
    _edit(partial_run, lambda doc: edit(doc, partial_run))
    out = partial_run.parent.parent / "out.parquet"
    result = CliRunner().invoke(cli, embed_args(corpus, out, tiny_gpt2_shared, "--resume"))
    assert result.exit_code == 3, result.output
    assert "is damaged" in result.output and "--overwrite" in result.output
    assert not out.exists()


def test_a_part_swapped_for_a_symlink_is_refused(partial_run, corpus, tiny_gpt2_shared):
    outside = _outside_part(partial_run)
    part = partial_run.parent / "part-000001.parquet"
    part.unlink()
    part.symlink_to(outside)
    out = partial_run.parent.parent / "out.parquet"
    result = CliRunner().invoke(cli, embed_args(corpus, out, tiny_gpt2_shared, "--resume"))
    assert result.exit_code == 3 and "not a regular file" in result.output, result.output


def test_an_untouched_partial_run_still_resumes(partial_run, corpus, tiny_gpt2_shared):
    out = partial_run.parent.parent / "out.parquet"
    result = CliRunner().invoke(cli, embed_args(corpus, out, tiny_gpt2_shared, "--resume"))
    assert result.exit_code == 0, result.output
    assert pq.read_table(out).column("id").to_pylist() == [f"d{i}" for i in range(60)]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_partial_directory_that_is_a_symlink_is_never_written_through(corpus, tiny_gpt2_shared, tmp_path, overwrite):
    elsewhere = tmp_path / "users-dir"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    (tmp_path / "out.parquet.partial").symlink_to(elsewhere)
    extra = ["--overwrite"] if overwrite else ["--resume"]
    result = CliRunner().invoke(cli, embed_args(corpus, tmp_path / "out.parquet", tiny_gpt2_shared, *extra))
    assert result.exit_code == 5 and "symlink" in result.output, result.output
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize(
    "raw, message",
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "RecursionError", id="nested-past-the-recursion-limit"),
        pytest.param(b'{"config": "\xff\xfe"}', "UnicodeDecodeError", id="not-utf8"),
        pytest.param(b'{"x": "' + b"a" * (17 << 20) + b'"}', "far more than embedkit writes", id="huge"),
    ],
)
def test_hostile_features_metadata_is_a_corrupt_input(features_file, tmp_path, raw, message):
    path = tmp_path / "hostile.parquet"
    table = pq.read_table(features_file(n=12))
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"embedkit": raw}), path)
    for args in (["info", path], ["index", "build", path, "-o", tmp_path / "idx", "-q"]):
        result = CliRunner().invoke(cli, [str(a) for a in args])
        assert result.exit_code == 3 and message in result.output, result.output
        assert "internal error" not in result.output
    assert not (tmp_path / "idx").exists()


def test_an_id_column_of_nested_values_is_refused_by_index_build(features_file, tmp_path):
    path = tmp_path / "nested-ids.parquet"
    table = pq.read_table(features_file(n=12))
    ids = pa.array([[{"a": i}] for i in range(table.num_rows)])
    pq.write_table(table.set_column(table.schema.get_field_index("id"), "id", ids), path)
    result = CliRunner().invoke(cli, ["index", "build", str(path), "-o", str(tmp_path / "idx"), "-q"])
    assert result.exit_code == 3 and "ids must be strings or numbers" in result.output, result.output


def test_a_jsonl_row_nested_past_the_recursion_limit_is_a_malformed_row(tiny_gpt2_shared, tmp_path):
    source = tmp_path / "deep.jsonl"
    deep = "[" * 100_000 + "]" * 100_000
    source.write_text(f'{{"text": "fine"}}\n{{"text": {deep}}}\n{deep}\n', encoding="utf-8")
    out = tmp_path / "deep.parquet"
    result = CliRunner().invoke(cli, ["embed", str(source), "-o", str(out), "-m", tiny_gpt2_shared, "-q"])
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column("status").to_pylist() == ["ok", "malformed", "malformed"]
    assert "nested too deeply" in table.column("error").to_pylist()[1]


@pytest.mark.parametrize(
    "state",
    [
        pytest.param(b'["embed"]', id="a-list"),
        pytest.param(b'{"embed": "done", "cluster": 3}', id="records-not-objects"),
        pytest.param(b'{"embed": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", id="nested-past-the-recursion-limit"),
        pytest.param(b'{"embed": {"fingerprint": "\xff"}}', id="not-utf8"),
    ],
)
def test_a_hand_edited_pipeline_state_reruns_the_stages(tiny_gpt2_shared, tmp_path, state):
    from embedkit.pipeline import STATE_FILE

    pipeline = Path(__file__).parent.parent / "pipelines" / "corpus-clustering.toml"
    args = ["run", str(pipeline), "-m", tiny_gpt2_shared, "--output-dir", str(tmp_path / "out")]
    assert CliRunner().invoke(cli, args).exit_code == 0
    (tmp_path / "out" / STATE_FILE).write_bytes(state)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "[embed] done in" in result.output and "[cluster] done in" in result.output
    assert json.loads((tmp_path / "out" / STATE_FILE).read_text())["cluster"]["fingerprint"]


@pytest.mark.parametrize(
    "head, message",
    [
        ('name = "../../escaped"', "name must be a plain file name"),
        ('name = "/tmp/escaped"', "name must be a plain file name"),
        ('name = ".."', "name must be a plain file name"),
        ("name = 7", "[pipeline] name: expected a string, got 7"),  # the typed schema, before any path use
        ("output_dir = 5", "[pipeline] output_dir: expected a string, got 5"),
    ],
)
def test_a_pipeline_cannot_name_its_way_out_of_embedkit_out(tmp_path, monkeypatch, head, message):
    work = tmp_path / "work"
    work.mkdir()
    (work / "in.txt").write_text("a line\n")
    (work / "p.toml").write_text(f'[pipeline]\n{head}\n[source]\npath = "in.txt"\n')
    monkeypatch.chdir(work)
    result = CliRunner().invoke(cli, ["run", "p.toml", "-m", "no-such-model"])
    assert result.exit_code == 2 and message in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_every_artefact_kind_registers_its_manifest_name():
    from embedkit import classify, cluster, dataset, index, probe
    from embedkit.artefact import MANIFEST_NAMES

    kinds = [index.META_FILE, classify.MANIFEST, cluster.MANIFEST, probe.MANIFEST, dataset.MANIFEST_NAME]
    assert sorted(MANIFEST_NAMES) == sorted(kinds)


def test_no_output_is_written_inside_a_sharded_dataset(features_file, tmp_path):
    """A dataset directory is sealed like the other artefacts: its shards are checked against its manifest."""
    from embedkit.dataset import DatasetWriter, write_shard
    from embedkit.store import open_features

    features = features_file(n=12, labels=("a", "b"))
    table = open_features(features).read_table(["id", "label", "embedding"])
    ds = tmp_path / "ds"
    with DatasetWriter(ds, {"job": 1}) as writer:
        writer.record(write_shard(writer.staging, 0, table))
        writer.finish({})
    before = {p.name: p.read_bytes() for p in ds.iterdir()}
    args = ["cluster", str(features), "--k", "2", "-o", str(ds / "clusters")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 5, result.output
    assert "inside the embedkit artefact" in result.output
    assert {p.name: p.read_bytes() for p in ds.iterdir()} == before


@pytest.fixture
def index_and_model(features_file, tmp_path):
    features = features_file(n=30, labels=("a", "b"))
    assert CliRunner().invoke(cli, ["index", "build", str(features), "-o", str(tmp_path / "idx"), "-q"]).exit_code == 0
    args = ["train", str(features), "--label-column", "label", "-o", str(tmp_path / "model")]
    assert CliRunner().invoke(cli, args).exit_code == 0
    return features, tmp_path / "idx", tmp_path / "model"


def test_no_output_is_written_inside_an_artefact(index_and_model, corpus, tiny_gpt2_shared, tmp_path):
    features, idx, model = index_and_model
    (tmp_path / "via-link").symlink_to(idx)
    before = {p: p.read_bytes() for d in (idx, model) for p in d.iterdir()}
    attempts = [
        # Replacing one of the artefact's own files: the artefact would fail its checksums from then on.
        ["embed", corpus, "-o", idx / "ids.parquet", "-m", tiny_gpt2_shared, "--id-column", "doc", "--overwrite"],
        ["predict", model, features, "-o", model / "eval_predictions.parquet", "--overwrite"],
        # A new file or directory in it, directly or through a symlink to it.
        ["predict", model, features, "-o", tmp_path / "via-link" / "predictions.parquet"],
        ["train", features, "--label-column", "label", "-o", idx / "model"],
        ["cluster", features, "-o", model / "clusters", "--k", "2", "-q"],
    ]
    for args in attempts:
        result = CliRunner().invoke(cli, [str(a) for a in args])
        assert result.exit_code == 5 and "inside the embedkit artefact" in result.output, (args, result.output)
    assert {p: p.read_bytes() for d in (idx, model) for p in d.iterdir()} == before
    assert CliRunner().invoke(cli, ["search", str(idx), "word", "-k", "2"]).exit_code == 0


def test_a_writer_never_takes_another_outputs_temp_file_for_its_own_leftover(tmp_path):
    from embedkit import artefact

    # "res.csv" is mid-write (its temp file beside it, under its own lock) when a writer of "res" starts.
    with artefact.writing_file(tmp_path / "res.csv") as tmp:
        tmp.write_text("rows\n")
        with artefact.writing_dir(tmp_path / "res", kind="k", manifest_name="m.json") as stage:
            stage.seal({})
        assert tmp.exists()
    assert (tmp_path / "res.csv").read_text() == "rows\n"
    # And the same for a file writer of "out" while "out.parquet" is mid-write.
    with artefact.writing_file(tmp_path / "out.parquet") as tmp:
        tmp.write_text("rows\n")
        with artefact.writing_file(tmp_path / "out") as other:
            other.write_text("x")
        assert tmp.exists()
    assert (tmp_path / "out.parquet").read_text() == "rows\n"


def test_a_killed_writers_leftovers_are_still_removed(tmp_path):
    from embedkit import artefact

    leftovers = [tmp_path / ".res.csv.ab12_xyz.tmp", tmp_path / ".res.csv.tmp-q1w2e3r4"]
    leftovers[0].write_text("half")
    leftovers[1].mkdir()
    with artefact.writing_file(tmp_path / "res.csv") as tmp:
        tmp.write_text("rows\n")
    assert not any(p.exists() for p in leftovers)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".res.csv.lock", "res.csv"]
