#!/usr/bin/env bash
# The README's test command: full set-up on a fresh machine (virtual environment, dependencies), then pytest.
# Extra arguments go to pytest, e.g. `bash .ci/test.sh -k extractor`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
exec .venv/bin/python -m pytest "$@"
