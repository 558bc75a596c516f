"""Every script in examples/ runs (with the tiny GPT-2 standing in for the real model) and leaves the current
directory alone."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


def test_examples_exist():
    assert len(EXAMPLES) >= 5, [e.name for e in EXAMPLES]


@pytest.mark.parametrize("script", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_runs(script, tiny_gpt2_shared, tmp_path, monkeypatch, capsys):
    # Run as `python script.py` would (``__main__``, its own argv, the current directory), but in this process:
    # a fresh interpreter paid the torch/transformers import again for every script (~5-7 s each on 2 busy cores)
    # and the scripts do not test the process boundary.
    monkeypatch.setenv("EMBEDKIT_MODEL", tiny_gpt2_shared)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setattr(sys, "argv", [str(script)])
    monkeypatch.chdir(tmp_path)
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        assert exc.code in (None, 0), f"{script.name} exited {exc.code}"
    assert capsys.readouterr().out.strip(), "an example should show what it did"
    # Examples write into their own temporary directory: run from a user's directory, they must never create or
    # replace a file there (build_and_search.py once overwrote ./docs.csv).
    assert not list(tmp_path.iterdir()), f"{script.name} wrote into the current directory"
