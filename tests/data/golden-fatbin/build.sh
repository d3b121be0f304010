#!/usr/bin/env bash
# Rebuilds libgolden.so (committed; tests read it without a CUDA toolkit). Built 2026-11-30 with
# nvcc 13.0 (V13.0.88), gcc on Ubuntu, x86-64. Three files for the "build archs" sm_80, sm_90a (arch-
# specific) and PTX compute_90, one "hand-tuned kernel" for sm_89 only: four fat-binary containers in one
# .nv_fatbin section, as libtorch_cuda.so has hundreds. -cudart none keeps the CUDA runtime out (small).
set -euo pipefail
cd "$(dirname "$0")"
main="-gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_90,code=compute_90"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for n in a b c; do nvcc -c -Xcompiler -fPIC $main $n.cu -o "$tmp/$n.o"; done
nvcc -c -Xcompiler -fPIC -gencode=arch=compute_89,code=sm_89 d.cu -o "$tmp/d.o"
nvcc -shared -cudart none "$tmp"/{a,b,c,d}.o -o "$tmp/libgolden.so"
strip --strip-unneeded "$tmp/libgolden.so" -o libgolden.so
