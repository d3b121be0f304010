#!/usr/bin/env bash
# envdoctor fix: replace flash-attn with a build made for the installed torch.
#
# 1. A prebuilt wheel whose tag matches torch, CUDA, C++ ABI and Python (FA_WHEEL_URL), if it exists.
# 2. Otherwise a source build against the installed torch: --no-build-isolation (flash-attn's setup.py
#    imports torch), only the detected GPUs' archs, MAX_JOBS from free memory, ninja present.
#
# Parameters (environment): PYTHON, FA_VERSION, FA_WHEEL_URL (may be empty), MAX_JOBS, NVCC_THREADS,
# FLASH_ATTN_CUDA_ARCHS, TORCH_PIN ("torch==2.8.0+cu128": written to a constraints file so that nothing
# here replaces torch). envdoctor prints this very call, variables included, as the finding's remedy.
set -euo pipefail
: "${PYTHON:?}" "${FA_VERSION:?}" "${MAX_JOBS:?}" "${NVCC_THREADS:?}" "${TORCH_PIN:?}"
PIP_CONSTRAINT=$(mktemp)
trap 'rm -f "$PIP_CONSTRAINT"' EXIT
echo "$TORCH_PIN" > "$PIP_CONSTRAINT"
pip=("$PYTHON" -m pip install --disable-pip-version-check --no-input --constraint "$PIP_CONSTRAINT")

if [[ -n "${FA_WHEEL_URL:-}" ]]; then
  echo "+ trying the prebuilt wheel $FA_WHEEL_URL"
  if "${pip[@]}" --force-reinstall --no-deps "$FA_WHEEL_URL"; then
    exit 0
  fi
  echo "no usable prebuilt wheel; building from source"
fi

"${pip[@]}" ninja packaging psutil wheel
export MAX_JOBS NVCC_THREADS FLASH_ATTENTION_FORCE_BUILD=TRUE
[[ -n "${FLASH_ATTN_CUDA_ARCHS:-}" ]] && export FLASH_ATTN_CUDA_ARCHS
echo "+ MAX_JOBS=$MAX_JOBS NVCC_THREADS=$NVCC_THREADS FLASH_ATTN_CUDA_ARCHS=${FLASH_ATTN_CUDA_ARCHS:-} pip install flash-attn==$FA_VERSION --no-build-isolation"
"${pip[@]}" --no-build-isolation --no-cache-dir --force-reinstall --no-deps "flash-attn==$FA_VERSION"
