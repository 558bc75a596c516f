"""`embedkit run`: the ready pipelines run end to end, unchanged stages are skipped, bad files are named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from embedkit.cli import cli

PIPELINES = Path(__file__).parent.parent / "pipelines"


def run(*args):
    result = CliRunner().invoke(cli, ["run", *map(str, args), "-q"])
    assert "Traceback" not in result.output
    return result


def stages(result, word):
    return [line.split("]")[0][1:] for line in result.output.splitlines() if line.startswith("[") and word in line]


@pytest.mark.parametrize(
    "name, outputs",
    [
        ("topic-classification", ["features.parquet", "model", "predictions.parquet"]),
        ("semantic-search", ["features.parquet", "index", "search-hits.parquet"]),
        ("corpus-clustering", ["features.parquet", "clusters"]),
    ],
)
def test_ready_pipelines_run_end_to_end(tiny_gpt2_shared, tmp_path, name, outputs):
    result = run(PIPELINES / f"{name}.toml", "--model", tiny_gpt2_shared, "--output-dir", tmp_path)
    assert result.exit_code == 0, result.output
    for output in outputs:
        assert (tmp_path / output).exists(), output
    assert pq.read_table(tmp_path / "features.parquet").num_rows == 160


def test_a_model_replaced_at_the_same_path_reruns_the_embedding(tiny_gpt2_shared, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_gpt2_shared, model)
    pipeline, out = PIPELINES / "corpus-clustering.toml", tmp_path / "out"
    assert stages(run(pipeline, "-m", model, "--output-dir", out), "done in") == ["embed", "cluster"]
    assert stages(run(pipeline, "-m", model, "--output-dir", out), "skipped") == ["embed", "cluster"]
    config = model / "config.json"
    config.write_text(config.read_text() + "\n")  # same settings, another file: the checkpoint was replaced
    assert stages(run(pipeline, "-m", model, "--output-dir", out), "done in") == ["embed", "cluster"]


def test_second_run_skips_and_a_changed_stage_reruns_only_what_depends_on_it(tiny_gpt2_shared, tmp_path):
    work = tmp_path / "pipelines"
    shutil.copytree(PIPELINES, work)
    shutil.copytree(PIPELINES.parent / "examples", tmp_path / "examples")
    pipeline = work / "topic-classification.toml"
    out = tmp_path / "out"
    first = run(pipeline, "-m", tiny_gpt2_shared, "--output-dir", out)
    assert stages(first, "done in") == ["embed", "train", "predict"]
    second = run(pipeline, "-m", tiny_gpt2_shared, "--output-dir", out)
    assert stages(second, "skipped") == ["embed", "train", "predict"] and "0 stage(s) ran" in second.output

    pipeline.write_text(pipeline.read_text().replace("cv = 5", "cv = 4"))
    third = run(pipeline, "-m", tiny_gpt2_shared, "--output-dir", out)
    assert stages(third, "skipped") == ["embed"] and stages(third, "done in") == ["train", "predict"]

    data = tmp_path / "examples" / "data" / "topics.csv"
    data.write_text(data.read_text().replace("Fans waited", "Supporters waited"))
    fourth = run(pipeline, "-m", tiny_gpt2_shared, "--output-dir", out)
    assert stages(fourth, "done in") == ["embed", "train", "predict"]

    forced = run(pipeline, "-m", tiny_gpt2_shared, "--output-dir", out, "--force")
    assert stages(forced, "done in") == ["embed", "train", "predict"]


@pytest.mark.parametrize(
    "body, message",
    [
        ('[source]\npath = "x.csv"\n[trian]\n', "[top level] unknown key(s) 'trian'"),
        (
            '[source]\npath = "x.csv"\n[train]\nclasifier = "svm"\n',
            "[train] unknown key(s) 'clasifier'; valid: C, alpha",
        ),
        ('[source]\npath = "x.csv"\ncolumn = "t"\n', "[source] unknown key(s) 'column'"),
        ('[source]\npath = "x.csv"\n[extract]\npooling = ["avg"]\n', "[extract] unknown pooling 'avg'; valid: mean"),
        (
            '[source]\npath = "x.csv"\n[extract]\nlayers = ["six"]\n',
            "[extract] layers must be an integer, got str 'six'",
        ),
        ('[source]\ntext_column = "t"\n', "[source] needs 'path'"),
        ('[source]\npath = "x.csv"\n[predict]\ninput = "y.csv"\n', "[predict] needs a [train] stage"),
        ('[source\npath = "x.csv"\n', "not valid TOML"),
        ('[source]\npath = "x.csv"\n[cluster]\nmethod = "dbscan"\n', "[cluster] unknown clustering method 'dbscan'"),
        (
            '[source]\npath = "x.csv"\nlabel_column = "label"\n[train]\nclassifier = "forest"\n',
            "[train]: unknown classifier 'forest'",
        ),
    ],
)
def test_bad_pipeline_files_name_the_key_table_and_file(tiny_gpt2_shared, tmp_path, body, message):
    (tmp_path / "x.csv").write_text("text,label\na b c,x\nd e f,y\n")
    path = tmp_path / "bad.toml"
    path.write_text(body)
    result = run(path, "-m", tiny_gpt2_shared, "--output-dir", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert str(path) in result.output and message in result.output


def test_missing_pipeline_file(tmp_path):
    result = run(tmp_path / "nope.toml")
    assert result.exit_code == 3 and "does not exist" in result.output
