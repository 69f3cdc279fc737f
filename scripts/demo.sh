#!/usr/bin/env bash
# Set up (idempotent) and run the project's main job: S3T on WordNet nouns with MiniLM,
# random deletions with their latency, then a retrain. Extra flags go to `s3t demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/s3t demo --plot s3t-demo.png "$@"
