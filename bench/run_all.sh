#!/usr/bin/env bash
# Run the benchmarks one after another (never in parallel: they time the machine), then
# regenerate BENCHMARKS.md (bench/vit.py pre-trains its backbone on first use). Default size
# takes about three hours on 2 cores; pass --quick
# for the small smoke-test size (a few minutes). Extra flags go to every benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PYTHON:-.venv/bin/python}
for bench in deletion_rate accuracy deletions deletion_cost training_cost perf cache vit llm faults service stream distributed mia; do
    echo "=== bench/${bench}.py $*"
    start=$(date +%s)
    "$PY" "bench/${bench}.py" "$@"
    echo "=== bench/${bench}.py took $(( $(date +%s) - start )) s"
done
"$PY" bench/report.py
