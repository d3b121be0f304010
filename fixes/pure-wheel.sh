#!/usr/bin/env bash
# envdoctor fix: replace a package with the pure-Python wheel of a release (py3-none-any: no compiled
# parts, so nothing that links CUDA). For companions such as torchao beside a CPU-only torch, whose
# platform wheels on PyPI are CUDA builds; pip would otherwise always prefer the platform wheel.
#
# Parameters: PYTHON (environment); PIP_CONSTRAINT optional (pins torch). Arguments: the requirements.
set -euo pipefail
: "${PYTHON:?PYTHON must name the target interpreter}"
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
echo "+ $PYTHON -m pip download --no-deps --only-binary=:all: --platform any $*"
"$PYTHON" -m pip download --disable-pip-version-check --no-input --no-deps --only-binary=:all: --platform any \
  -d "$d" "$@"
args=(-m pip install --disable-pip-version-check --no-input --no-deps --force-reinstall)
if [[ -n "${PIP_CONSTRAINT:-}" ]]; then
  args+=(--constraint "$PIP_CONSTRAINT")
fi
echo "+ $PYTHON ${args[*]} $(cd "$d" && ls ./*.whl)"
"$PYTHON" "${args[@]}" "$d"/*.whl
