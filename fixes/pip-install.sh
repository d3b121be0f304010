#!/usr/bin/env bash
# envdoctor fix: one pip install into the target environment.
#
# Parameters (computed by envdoctor, passed as environment variables):
#   PYTHON           the target interpreter
#   PIP_CONSTRAINT   optional: a constraints file pinning torch at its installed version and build,
#                    so that nothing installed here can replace torch by accident
# Arguments: what to install, and pip options (e.g. --index-url for a PyTorch build).
set -euo pipefail
: "${PYTHON:?PYTHON must name the target interpreter}"
args=(-m pip install --disable-pip-version-check --no-input)
if [[ -n "${PIP_CONSTRAINT:-}" ]]; then
  args+=(--constraint "$PIP_CONSTRAINT")
fi
echo "+ $PYTHON ${args[*]} $*"
exec "$PYTHON" "${args[@]}" "$@"
