#!/usr/bin/env bash
# The merge benchmark on the Llama-3.1-8B shape, in ONE device call on one H200 (~5 min; < 9 min):
# bench/bench_merge.py builds a random-weight bf16 base (16 GB) and an r=64 adapter on all seven projections
# on the GPU (no download), measures the disk (a copy of one 5 GB shard with fsync), then runs train/merge.py
# (the pipeline) and the plain PEFT path (from_pretrained + merge_and_unload + save_pretrained) alternating
# over two rounds, deleting each output after its run (the box has 64 GiB of disk: 16 GB base + 16 GB per
# output), and verifies the first merge apart (train/verify.py on the GPU, timed separately); then one run
# each of two variants of the pipeline (no early writeback; more threads), to show which knob matters.
#     bash bench/h200_merge.sh            results: $OUT/bench_merge_8b.{txt,json}
# MERGE_WORKDIR picks the folder (default: the one of /tmp and $PWD with the most free space).
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 NO_COLOR=1 OUT=${OUT:-/tmp}
kfree() { df -Pk "$1" 2>/dev/null | awk 'NR==2 {print $4}'; }
if [[ -z "${MERGE_WORKDIR:-}" ]]; then
  if (( $(kfree /tmp) >= $(kfree "$PWD") )); then MERGE_WORKDIR=/tmp/envdoctor-merge-bench; else MERGE_WORKDIR=$PWD/.merge-bench; fi
fi
mkdir -p "$MERGE_WORKDIR"
echo "== workdir $MERGE_WORKDIR: $(( $(kfree "$MERGE_WORKDIR") / 1048576 )) GiB free; $(nproc) CPUs; $(free -g | awk '/Mem/ {print $2}') GiB RAM"
df -h "$MERGE_WORKDIR" | tail -1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
python3 -c "import torch, transformers, peft, safetensors; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'safetensors', safetensors.__version__)"
start=$SECONDS
python3 bench/bench_merge.py --shape 8b --workdir "$MERGE_WORKDIR" --rounds 2 --json-out "$OUT/bench_merge_8b.json" \
  --variant="--no-early-writeback" --variant="--readers 4 --writers 8" 2>&1 \
  | grep -vE "Warning|warn\(|Loading weights|it/s\]" | tee "$OUT/bench_merge_8b.txt"
echo "== total $(( SECONDS - start )) s"
rm -rf "$MERGE_WORKDIR"
