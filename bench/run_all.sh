#!/usr/bin/env bash
# Run every benchmark (python -m bench --list) one after another, never in parallel (they time
# the machine), then regenerate BENCHMARKS.md: `python -m bench all`. Default size takes many
# hours on 2 cores (bench/scale.py alone several); pass --quick for the small size. Extra flags
# go to every benchmark. `python -m bench --smoke all` checks that each one runs (minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PYTHON:-.venv/bin/python}
"$PY" -m bench all "$@"
