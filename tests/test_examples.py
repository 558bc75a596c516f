"""Every script in examples/ runs (with the tiny GPT-2 standing in for the real model) and leaves the current
directory alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


def test_examples_exist():
    assert len(EXAMPLES) >= 5, [e.name for e in EXAMPLES]


@pytest.mark.parametrize("script", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_runs(script, tiny_gpt2_shared, tmp_path):
    env = {**os.environ, "EMBEDKIT_MODEL": tiny_gpt2_shared, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), "an example should show what it did"
    # Examples write into their own temporary directory: run from a user's directory, they must never create or
    # replace a file there (build_and_search.py once overwrote ./docs.csv).
    assert not list(tmp_path.iterdir()), f"{script.name} wrote into the current directory"
