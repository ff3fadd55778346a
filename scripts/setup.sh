#!/usr/bin/env bash
# Installs smt-pipeline and its dev tools into $PYTHON (default: python3, i.e. the active venv's python
# when one is active). Where that interpreter refuses pip installs (PEP 668, stock Debian/Ubuntu) and no
# venv is active, it makes ./.venv and installs there.
#
# torch: GPU machines (a working nvidia-smi) get the default build as before. Elsewhere the CPU build is
# installed first, so that the `torch` requirement never pulls the multi-GB CUDA build and its nvidia-*
# wheels: from PyPI on macOS (CPU there anyway), else from PyTorch's CPU index when it answers within a few
# seconds, else `torch==<version>+cpu` from any wheel source pip is configured with (a local wheel store
# via find-links, a mirror). The `+cpu` pin cannot match the CUDA build, so a miss fails instead of
# downloading it. SMT_TORCH_VERSION picks the release (default 2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=${SMT_TORCH_VERSION:-2.13.0}
CPU_INDEX=https://download.pytorch.org/whl/cpu

if ! command -v "$PY" >/dev/null 2>&1; then
  echo "setup: no Python interpreter '$PY' on PATH; install Python >= 3.11 or set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: $PY is $("$PY" -V 2>&1); smt-pipeline needs Python >= 3.11 (zarr 3): run PYTHON=python3.11 bash scripts/setup.sh, or inside a venv made from it" >&2
  exit 1
fi
in_venv() { "$1" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; }
managed() { "$1" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; }
if ! in_venv "$PY" && managed "$PY"; then
  echo "setup: $PY is managed by the system (PEP 668); installing into ./.venv (activate it: . .venv/bin/activate)" >&2
  [ -x .venv/bin/python3 ] || "$PY" -m venv .venv
  PY=.venv/bin/python3
fi

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install "torch>=2.3"
  elif [ "$(uname -s)" = Darwin ]; then
    "$PY" -m pip install "torch==$TORCH_VERSION"
  elif "$PY" -c "import urllib.request as u; u.urlopen('$CPU_INDEX/torch/', timeout=5)" >/dev/null 2>&1; then
    "$PY" -m pip install "torch==$TORCH_VERSION+cpu" --index-url "$CPU_INDEX"
  elif ! "$PY" -m pip install "torch==$TORCH_VERSION+cpu"; then
    echo "setup: no CPU build of torch $TORCH_VERSION: $CPU_INDEX did not answer and no torch-$TORCH_VERSION+cpu wheel is in pip's sources; put one in a folder and set PIP_FIND_LINKS to it, or set SMT_TORCH_VERSION" >&2
    exit 1
  fi
fi
# The package first, then the dev tools with boto3 held to the botocore that s3fs's aiobotocore settled on:
# boto3 X.Y.Z needs botocore >= X.Y.Z, and the newest boto3 usually needs a botocore newer than aiobotocore
# allows, which sends pip's resolver backtracking through every aiobotocore, s3fs and moto release for many
# minutes on a fresh venv (moto, a dev tool, is what asks for boto3).
"$PY" -m pip install -e . --config-settings editable_mode=compat
BOTOCORE=$("$PY" -c "import botocore; print(botocore.__version__)")
"$PY" -m pip install -e '.[dev]' "botocore==$BOTOCORE" "boto3<=$BOTOCORE" --config-settings editable_mode=compat
