#!/usr/bin/env bash
# Installs smt-pipeline and its dev tools. On a machine without CUDA it installs the CPU build of torch
# first, so that no multi-GB CUDA wheel is pulled in by the unpinned `torch` requirement.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install "torch>=2.3"
  else
    # A CPU wheel: from the machine's local wheel store where one exists, else PyTorch's CPU index.
    "$PY" -m pip install "torch==2.13.0" || \
      "$PY" -m pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
"$PY" -m pip install -e '.[dev]' --config-settings editable_mode=compat
