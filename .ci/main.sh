#!/usr/bin/env bash
# The README's main-job command: full set-up on a fresh machine, then the three ready pipelines end to end
# (embed -> train -> predict; embed -> index -> search; embed -> cluster) on the sample data in examples/data.
# The model is openai-community/gpt2 unless $EMBEDKIT_MODEL (or --model, passed through) names another;
# offline, point EMBEDKIT_MODEL at a local checkpoint directory.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup.sh
for pipeline in topic-classification semantic-search corpus-clustering; do
  .venv/bin/embedkit run "pipelines/$pipeline.toml" "$@"
done
