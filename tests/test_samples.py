"""`embedkit samples`: the shipped sample files land whole, and a user's own files of the same name are never replaced
unless asked."""

from __future__ import annotations

import csv
import fnmatch
import io
import sys
from collections import Counter
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import pytest
from click.testing import CliRunner

from embedkit.cli import cli
from embedkit.errors import OutputError
from embedkit.samples import SAMPLES, sample_bytes, write_samples

ROOT = Path(__file__).resolve().parent.parent


def _rows(name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(sample_bytes(name).decode("utf-8"))))


def test_write_samples_copies_every_file(tmp_path):
    result = write_samples(tmp_path / "new" / "dir")
    assert result.written == list(SAMPLES)
    for name in SAMPLES:
        assert (tmp_path / "new" / "dir" / name).read_bytes() == sample_bytes(name)
    lines = result.summary_lines()
    assert lines[0].startswith(f"wrote {len(SAMPLES)} sample files into ")
    assert all(any(name in line for line in lines) for name in SAMPLES)


def test_existing_files_are_refused_and_nothing_is_written(tmp_path):
    (tmp_path / "tickets.csv").write_text("my own tickets\n")
    with pytest.raises(OutputError, match="tickets.csv.*--overwrite"):
        write_samples(tmp_path)
    assert (tmp_path / "tickets.csv").read_text() == "my own tickets\n"
    assert not (tmp_path / "reviews.csv").exists(), "a refused call must not write the other files either"

    write_samples(tmp_path, overwrite=True)
    assert (tmp_path / "tickets.csv").read_bytes() == sample_bytes("tickets.csv")


def test_cli_writes_into_the_current_directory_and_refuses_a_second_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    first = runner.invoke(cli, ["samples"])
    assert first.exit_code == 0, first.output
    assert "wrote 7 sample files" in first.output
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted(SAMPLES)
    second = runner.invoke(cli, ["samples", "."])
    assert second.exit_code == OutputError.exit_code
    assert "--overwrite" in second.output and "Traceback" not in second.output
    assert runner.invoke(cli, ["samples", ".", "--overwrite"]).exit_code == 0


def test_a_file_given_as_the_directory_is_a_clean_error(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    result = CliRunner().invoke(cli, ["samples", str(target)])
    assert result.exit_code == 2 and "is a file" in result.output  # click's usage error, before any writing
    with pytest.raises(OutputError, match="is a file"):
        write_samples(target)
    assert target.read_text() == "x"


def test_the_samples_are_big_enough_for_each_stage():
    tickets = _rows("tickets.csv")
    assert set(tickets[0]) == {"ticket_id", "label", "body"}
    counts = Counter(row["label"] for row in tickets)
    assert len(counts) == 4 and min(counts.values()) >= 15, counts  # a classifier with 5-fold CV per class
    reviews = _rows("reviews.csv")
    assert set(reviews[0]) == {"review_id", "stars", "body"}
    assert Counter(row["stars"] for row in reviews).keys() == {"1", "2", "3", "4", "5"}
    assert len(_rows("docs.csv")) >= 30 and len(_rows("questions.csv")) >= 3
    for name in SAMPLES:
        if name.endswith(".csv"):
            rows = _rows(name)
            ids = [next(iter(row.values())) for row in rows]
            assert len(set(ids)) == len(ids), f"{name}: ids repeat"
            assert all(all(value.strip() for value in row.values()) for row in rows), f"{name}: empty cell"
    doc_ids = {row["doc_id"] for row in _rows("docs.csv")}
    assert not doc_ids & {row["doc_id"] for row in _rows("more_docs.csv")}, "index add needs new ids"


def test_the_pipeline_sample_reads_only_sample_files():
    pipeline = tomllib.loads(sample_bytes("tickets.toml").decode("utf-8"))
    assert pipeline["source"]["path"] in SAMPLES
    assert pipeline["predict"]["input"] in SAMPLES


def test_the_samples_are_declared_package_data():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = declared["embedkit.samples"]
    for name in SAMPLES:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), f"{name} would not be installed"
