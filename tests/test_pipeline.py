"""`embedkit run`: the ready pipelines run end to end, unchanged stages are skipped, bad files are named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from embedkit.cli import cli
from embedkit.errors import ConfigError
from embedkit.pipeline import load_pipeline

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


def _fixed_c(pipeline: Path) -> None:
    """A fixed C in a copied pipeline's [train]: the search over C took ~2/3 of the tests that train it 4-5 times and
    plays no part in what they check (which stages rerun, which features are shared)."""
    pipeline.write_text(pipeline.read_text().replace("cv = 5", "cv = 5\nC = 1.0"))
    assert "C = 1.0" in pipeline.read_text()


def test_second_run_skips_and_a_changed_stage_reruns_only_what_depends_on_it(tiny_gpt2_shared, tmp_path):
    work = tmp_path / "pipelines"
    shutil.copytree(PIPELINES, work)
    shutil.copytree(PIPELINES.parent / "examples", tmp_path / "examples")
    pipeline = work / "topic-classification.toml"
    _fixed_c(pipeline)
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


def test_pipelines_embedding_the_same_input_alike_share_one_features_file(tiny_gpt2_shared, tmp_path):
    """The main job's three pipelines embed topics.csv with the same settings: only the first one embeds it."""
    root = tmp_path / "embedkit-out"
    work = tmp_path / "pipelines"
    shutil.copytree(PIPELINES, work)
    shutil.copytree(PIPELINES.parent / "examples", tmp_path / "examples")
    _fixed_c(work / "topic-classification.toml")
    first = run(work / "topic-classification.toml", "-m", tiny_gpt2_shared, "--output-dir", root / "a")
    assert first.exit_code == 0, first.output
    assert "reused" not in first.output and "160 rows" in first.output
    # Another pipeline, another file path to the same bytes, another label column: the same features.
    shutil.copy(tmp_path / "examples" / "data" / "topics.csv", tmp_path / "copy.csv")
    other = work / "corpus-clustering.toml"
    other.write_text(other.read_text().replace("../examples/data/topics.csv", "../copy.csv"))
    second = run(other, "-m", tiny_gpt2_shared, "--output-dir", root / "b")
    assert second.exit_code == 0, second.output
    assert "[embed] done in" in second.output and "reused features embedded earlier" in second.output
    entries = list((root / ".features-cache").glob("*.parquet"))
    assert len(entries) == 1
    a, b = pq.read_table(root / "a" / "features.parquet"), pq.read_table(root / "b" / "features.parquet")
    assert a.equals(b) and a.schema.metadata == b.schema.metadata
    assert (root / "b" / "features.parquet").stat().st_ino == entries[0].stat().st_ino  # a link, not a copy

    # Other extraction settings, or other stored columns, are other features: embedded anew.
    other.write_text(other.read_text().replace('pooling = ["mean"]', 'pooling = ["last"]'))
    third = run(other, "-m", tiny_gpt2_shared, "--output-dir", root / "b")
    assert "reused" not in third.output and len(list((root / ".features-cache").glob("*.parquet"))) == 2
    assert "embedding" in pq.read_schema(root / "b" / "features.parquet").names
    assert not pq.read_table(root / "b" / "features.parquet").equals(a)
    # --force embeds again even where the cache holds the features.
    forced = run(work / "topic-classification.toml", "-m", tiny_gpt2_shared, "--output-dir", root / "a", "--force")
    assert forced.exit_code == 0 and "reused" not in forced.output


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
            '[extract] layers: expected an integer or a list of integers, got ["six"]',
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


# --------------------------------------------------------------------------------------------------- the schema
# load_pipeline validates every table before anything runs; these need no model.


def load_error(tmp_path, body):
    path = tmp_path / "p.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path)
    assert str(path) in str(caught.value)
    return str(caught.value)


SOURCE = '[source]\npath = "x.csv"\nlabel_column = "label"\n'


def test_a_string_where_an_integer_belongs_is_a_usage_error_naming_file_table_and_key(tiny_gpt2_shared, tmp_path):
    (tmp_path / "x.csv").write_text("text,label\na b c,x\nd e f,y\n")
    path = tmp_path / "cv.toml"
    path.write_text(SOURCE + '[train]\ncv = "5"\n')
    result = run(path, "-m", tiny_gpt2_shared, "--output-dir", tmp_path / "out")
    assert result.exit_code == 2, result.output  # was an internal error (exit 1) before the schema
    assert f'{path}: [train] cv: expected an integer, got "5"' in result.output
    assert not (tmp_path / "out" / "features.parquet").exists()  # refused before the embedding


@pytest.mark.parametrize(
    "table, body, message",
    [
        ("pipeline", "[pipeline]\nname = 3\n" + SOURCE, "[pipeline] name: expected a string, got 3"),
        (
            "source",
            '[source]\npath = "x.csv"\nkeep = "text"\n',
            '[source] keep: expected a list of strings, got "text"',
        ),
        ("extract", SOURCE + "[extract]\nnormalize = 1\n", "[extract] normalize: expected true or false, got 1"),
        ("extract", SOURCE + "[extract]\nbatch_tokens = 1.5\n", "[extract] batch_tokens: expected an integer, got 1.5"),
        ("train", SOURCE + '[train]\nC = "1"\n', '[train] C: expected a number, got "1"'),
        ("predict", SOURCE + '[train]\n[predict]\ninput = "y.csv"\nkeep = "a"\n', "[predict] keep: expected a list"),
        ("cluster", SOURCE + "[cluster]\nk_range = [2, 3, 4]\n", "[cluster] k_range: expected a list of 2 integers"),
        ("index", SOURCE + '[index]\ntarget_recall = "high"\n', '[index] target_recall: expected a number, got "high"'),
        (
            "search",
            SOURCE + '[index]\n[search]\nqueries = "q.csv"\nk = "3"\n',
            '[search] k: expected an integer, got "3"',
        ),
        ("probe", SOURCE + '[probe]\nnmi = "yes"\n', '[probe] nmi: expected true or false, got "yes"'),
    ],
)
def test_a_wrong_type_in_any_table_names_the_key_and_what_was_expected(tmp_path, table, body, message):
    assert message in load_error(tmp_path, body)


@pytest.mark.parametrize(
    "table", ["pipeline", "source", "extract", "train", "predict", "cluster", "index", "search", "probe"]
)
def test_an_unknown_key_in_any_table_is_named_with_the_valid_ones(tmp_path, table):
    tables = {"source": 'path = "x.csv"\nlabel_column = "label"\n', "predict": 'input = "y.csv"\n'}
    tables |= {"search": 'queries = "q.csv"\n', "train": "", "index": ""}
    tables[table] = tables.get(table, "") + "colour = 1\n"
    body = "".join(f"[{name}]\n{keys}" for name, keys in tables.items())
    assert f"[{table}] unknown key(s) 'colour'; valid: " in load_error(tmp_path, body)


@pytest.mark.parametrize(
    "body, message",
    [
        ('[source]\ntext_column = "t"\n', "[source] needs 'path' (the input file, directory or glob)"),
        (SOURCE + "[train]\n[predict]\n", "[predict] needs 'input' (a string)"),
        (SOURCE + "[index]\n[search]\nk = 3\n", "[search] needs 'queries' (a string)"),
        ('[source]\npath = "x.csv"\n[train]\n', "[train] needs 'label_column', in this table or in [source]"),
    ],
)
def test_a_missing_required_key_is_named(tmp_path, body, message):
    assert message in load_error(tmp_path, body)


@pytest.mark.parametrize("path", sorted(PIPELINES.glob("*.toml")), ids=lambda p: p.stem)
def test_the_shipped_pipelines_validate(path):
    pipeline = load_pipeline(path)
    assert pipeline.stages and pipeline.source["path"]
