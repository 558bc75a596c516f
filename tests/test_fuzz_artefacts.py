"""Hostile or damaged artefact metadata never runs code, never escapes the artefact, never ends in a traceback.

Hypothesis mutates the JSON that each artefact kind stores (a features file's Parquet metadata, an index's
``index.json``, a classifier's ``embedkit_model.json``, a clustering's ``summary.json``) one random edit at a time
and runs the commands that read it. Every outcome must be a documented exit code (0 when the edit is harmless)
with a one-line message: never exit 1 ("internal error") and never a traceback.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import sample_texts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedkit.cli import cli
from embedkit.store import META_KEY

DOCUMENTED = {0, 2, 3, 4, 5, 6, 7}
HOSTILE_STRINGS = ["../outside.txt", "/etc/passwd", "", "x" * 300, "nan", "-1", "🙂", "a/b", ".", "..", "null"]

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(HOSTILE_STRINGS),
    st.text(max_size=20),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def _paths(doc, prefix=()):
    """Every (path) to a value inside a JSON document, the root's children first."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield (*prefix, i)
            yield from _paths(value, (*prefix, i))


@st.composite
def mutations(draw, doc):
    """One edit of ``doc``: a value replaced, a key deleted, or a value's type changed."""
    paths = list(_paths(doc))
    path = draw(st.sampled_from(paths))
    op = draw(st.sampled_from(["replace", "delete", "replace"]))
    value = draw(json_value)
    mutated = copy.deepcopy(doc)
    parent = mutated
    for step in path[:-1]:
        parent = parent[step]
    if op == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return mutated


def _run(args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
    assert result.exit_code in DOCUMENTED, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    assert "internal error" not in result.output and "Traceback" not in result.output, result.output
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory, _gpt2_master):
    """One of each artefact, made by the real commands from the tiny GPT-2."""
    root = tmp_path_factory.mktemp("artefacts")
    src = root / "docs.csv"
    rows = ["id,text,label"] + [f"d{i},{t},{'ab'[i % 2]}" for i, t in enumerate(sample_texts(40, seed=5))]
    src.write_text("\n".join(rows) + "\n", encoding="utf-8")
    features = root / "features.parquet"
    _run(["embed", src, "-o", features, "--model", _gpt2_master, "--id-column", "id", "--keep", "text,label", "-q"])
    _run(["index", "build", features, "-o", root / "idx", "-q"])
    _run(["train", features, "--label-column", "label", "-o", root / "model"])
    _run(["cluster", features, "-o", root / "clusters", "--k", "2", "-q"])
    (root / "outside.txt").write_text("sentinel")
    return root


def _fresh(built: Path, name: str, work: Path) -> Path:
    dst = work / name
    if dst.exists():
        shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
    (shutil.copytree if (built / name).is_dir() else shutil.copy2)(built / name, dst)
    return dst


FUZZ = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(data=st.data())
def test_mutated_index_json(built, tmp_path, data):
    index = _fresh(built, "idx", tmp_path)
    doc = json.loads((index / "index.json").read_text())
    (index / "index.json").write_text(json.dumps(data.draw(mutations(doc))))
    _run(["search", index, "word", "-k", "3"])
    _run(["index", "add", index, built / "features.parquet"])
    assert (built / "outside.txt").read_text() == "sentinel"


@FUZZ
@given(data=st.data())
def test_mutated_model_manifest(built, tmp_path, data):
    model = _fresh(built, "model", tmp_path)
    doc = json.loads((model / "embedkit_model.json").read_text())
    (model / "embedkit_model.json").write_text(json.dumps(data.draw(mutations(doc))))
    _run(["predict", model, built / "features.parquet", "-o", tmp_path / "pred.csv", "--overwrite"])
    _run(["predict", model, built / "docs.csv", "-o", tmp_path / "pred2.csv", "--overwrite"])
    assert (built / "outside.txt").read_text() == "sentinel"


@FUZZ
@given(data=st.data())
def test_mutated_features_metadata(built, tmp_path, data):
    path = tmp_path / "features.parquet"
    table = pq.read_table(built / "features.parquet")
    doc = json.loads(table.schema.metadata[META_KEY])
    mutated = data.draw(mutations(doc))
    pq.write_table(
        table.replace_schema_metadata({**table.schema.metadata, META_KEY: json.dumps(mutated).encode()}), path
    )
    _run(["info", path])
    # A fixed C: the search over C reads no metadata and took ~2/3 of this test's time (25 examples).
    _run(["train", path, "--label-column", "label", "-o", tmp_path / "m", "--overwrite", "--C", "1"])
    _run(["index", "build", path, "-o", tmp_path / "i", "--overwrite", "-q"])
    _run(["search", tmp_path / "i", "word", "-k", "2"])
    _run(["predict", tmp_path / "m", built / "docs.csv", "-o", tmp_path / "p.csv", "--overwrite"])
    assert (built / "outside.txt").read_text() == "sentinel"
