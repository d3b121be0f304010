#!/usr/bin/env bash
# envdoctor fix: delete what an interrupted pip run left in site-packages (~name folders and
# ~name-version.dist-info metadata). pip itself ignores these invalid names, so it never cleans them up.
#
# Parameters: PYTHON  the target interpreter (each path must sit directly in one of its sys.path folders)
# Arguments:  the leftover paths; each name must start with "~" (anything else is refused, nothing deleted)
set -euo pipefail
: "${PYTHON:?PYTHON must name the target interpreter}"
mapfile -t sites < <("$PYTHON" -c 'import os, sys; print("\n".join(os.path.realpath(p) for p in sys.path if p))')
for p in "$@"; do
  name=$(basename -- "$p")
  parent=$(realpath -- "$(dirname -- "$p")")
  if [[ "$name" != "~"?* ]]; then
    echo "refused: $p is not a leftover (its name does not start with ~)" >&2; exit 2
  fi
  found=0
  for s in "${sites[@]}"; do [[ "$s" == "$parent" ]] && found=1; done
  if [[ $found -eq 0 ]]; then
    echo "refused: $p is not in a sys.path folder of $PYTHON" >&2; exit 2
  fi
done
for p in "$@"; do
  echo "+ rm -rf -- $p"
  rm -rf -- "$p"
done
