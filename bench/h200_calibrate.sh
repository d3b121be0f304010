#!/usr/bin/env bash
# The memory calibration (issue #18) on one H200, in device calls of < 10 min each; every point is a JSON
# line in $OUT/calibration-<part>.jsonl, written as it is measured. Random-weight models (no download)
# of the public Llama-3.1-8B / 3.2-3B / 3.2-1B shapes are saved once to /tmp/envdoctor-random-models.
#   bash bench/h200_calibrate.sh a   # Llama-3.1-8B, hf-loop + hf-trainer (38 points; ~7-8 min, budget-stopped)
#   bash bench/h200_calibrate.sh b   # Llama-3.1-8B runner (19), then 3B and 1B, all engines (36; ~8 min)
# (needs the bitsandbytes wheel in .whl/: carry it; each call stops cleanly at ${BUDGET:-550} s)
#   bash bench/h200_calibrate.sh liger   # optional: 8B hf-loop with Liger kernels, if liger-kernel is there
# Then, here: python bench/fit_memory.py bench/results/h200-calibration-*.jsonl
set -u
part=${1:-a}
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp}
if ! python3 -c "import bitsandbytes" 2>/dev/null; then  # the device has no bitsandbytes: the carried wheel
  [ -d /tmp/site/bitsandbytes ] || pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv | tee $OUT/nvidia-smi.csv
start=$SECONDS
left() { echo $(( ${BUDGET:-550} - (SECONDS - start) )); }
cal() { python3 bench/calibrate_memory.py --out $OUT/calibration-$part.jsonl "$@" 2>&1 \
          | grep -vE "Warning|warnings.warn|^ *state\[|Loading weights|^\{'train_runtime"; }
case $part in
  a) cal --shapes llama-3.1-8b --engines hf-loop,hf-trainer --budget-s $(left) ;;
  b) cal --shapes llama-3.1-8b --engines runner --budget-s $(( $(left) - 250 ))
     cal --shapes llama-3.2-3b,llama-3.2-1b --budget-s $(left) ;;
  liger) cal --shapes llama-3.1-8b --engines hf-loop --liger --budget-s $(left) ;;
  *) echo "usage: bash bench/h200_calibrate.sh a|b|liger"; exit 2 ;;
esac
nvidia-smi --query-gpu=memory.used --format=csv,noheader
echo "points: $(grep -c '"kind": "point"' $OUT/calibration-$part.jsonl) in $((SECONDS - start)) s"
