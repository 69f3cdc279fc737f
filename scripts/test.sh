#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite plus the linter, the import contracts
# and the type checker.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Unbuffered: if a test ever takes the process down abruptly, the log shows how far it got.
export PYTHONUNBUFFERED=1
.venv/bin/ruff check .
.venv/bin/lint-imports            # the layering contracts in pyproject.toml
.venv/bin/mypy s3t
# Two pytest-xdist workers (the CI machine has 2 cores): many tests wait on a server, a browser
# or a subprocess, and the benchmarks' smoke parts run beside them. loadscope: each test file
# (or test class) is one unit of work, so module fixtures are built once, as in a serial run,
# and all Ray tests (tests/test_ray.py) share one Ray instance; the longest units go first
# (tests/conftest.py).
.venv/bin/python -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder "$@"
