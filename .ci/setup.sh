#!/usr/bin/env bash
# Create .venv and install embedkit with its dev extras on a fresh machine. Safe to re-run: when neither
# pyproject.toml nor this script changed since the last install, it does nothing (the install takes minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
stamp=.venv/.embedkit-setup
want=$(cat pyproject.toml .ci/setup.sh | sha256sum | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && .venv/bin/python -c "import embedkit" 2>/dev/null; then
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, pinned to the CPU build: a bare "torch" requirement would pull a multi-GB CUDA build.
# Users installing embedkit themselves get any torch>=2.4 (see pyproject.toml).
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
echo "$want" > "$stamp"
