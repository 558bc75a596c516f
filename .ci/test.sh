#!/usr/bin/env bash
# The README's test command: full set-up on a fresh machine (virtual environment, dependencies), then the lint and
# type checks, then pytest. Extra arguments go to pytest, e.g. `bash .ci/test.sh -k extractor`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
# The checks run first and stop the run: they take seconds, the tests take minutes. Settings: pyproject.toml.
check() {
  local what=$1
  shift
  if ! "$@"; then
    echo "test.sh: $what failed (\`${*#.venv/bin/}\` above); fix it before the tests run" >&2
    exit 1
  fi
}
check "lint" .venv/bin/ruff check .
check "formatting" .venv/bin/ruff format --check .
check "type check" .venv/bin/mypy embedkit
exec .venv/bin/python -m pytest "$@"
