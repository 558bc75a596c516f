#!/usr/bin/env bash
# Create .venv and install embedkit with its dev extras on a fresh machine. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, pinned to the CPU build: a bare "torch" requirement would pull a multi-GB CUDA build.
# Users installing embedkit themselves get any torch>=2.4 (see pyproject.toml).
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
