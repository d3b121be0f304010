#!/usr/bin/env bash
# FSDP over a 4-bit base on the 2×H200 box, in one call (expected ≈ 5-6 min incl. the wheel install):
#  (a) a shape that fits one card (Llama-1B-like, NF4, LoRA all-linear, seq 512): 1 process unsharded vs
#      2 processes --fsdp: the losses must agree (a lost quantisation state gives other losses / NaN / errors)
#  (b) Llama-3-70B's width with 12 layers (random weights built a layer at a time; nothing downloaded),
#      2 processes --fsdp on two emulated CARD_GIB cards (ENVDOCTOR_GPU_MEMORY_FRACTION, a test aid the
#      runner honours): loss per step, per-GPU peak allocated/reserved, host RSS per rank, tokens/s
#  (c) the preflight's config.memory check for the same shape against one emulated card (expected: fail)
#   bash bench/h200x2_fsdp4.sh     (carry .whl: bitsandbytes 0.50.2 is installed from it when missing)
#   TINY=1 bash bench/h200x2_fsdp4.sh   on a CPU: the same steps on tiny shapes (proves the script)
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 NO_COLOR=1 OUT=${OUT:-/tmp/fsdp4-out}
PY=${PY:-$(command -v python3)}
if ! $PY -c "import bitsandbytes" 2>/dev/null && ls .whl/bitsandbytes-*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/bitsandbytes-*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
R=${R:-/tmp/envdoctor-fsdp4}; rm -rf $R; mkdir -p $R $OUT
CARD_GIB=${CARD_GIB:-9}
$PY bench/fsdp4_bench.py prep $R ${TINY:+--tiny}
quiet() { grep -vE "Warning|warn\(|^ *warnings.warn|^.{0,40}step [0-9]+/[0-9]+ |Loading weights|kernels" | grep -E "data:|note:|model:|error|Error|rank|done:|validation|Traceback|memory" ; }
train() { timeout $1 $PY -m envdoctor train $2 --python $PY "${@:3}" 2>&1 | tee -a $OUT/train.log | quiet | cut -c1-240; }
if [ -z "${SKIP_FITS:-}" ]; then  # SKIP_FITS=1: only (b) and (c)
  echo "== (a) fits one card: 1 process, unsharded";   CUDA_VISIBLE_DEVICES=0 train 150 $R/fits1.yaml --nproc 1
  echo "== (a) fits one card: 2 processes, --fsdp";    train 150 $R/fits2.yaml --nproc 2 --fsdp
fi
if [ -z "${TINY:-}" ]; then
  FRACTION=$($PY -c "import torch; print($CARD_GIB * 2**30 / torch.cuda.get_device_properties(0).total_memory)")
else FRACTION=""; fi
echo "== (b) 70B width, 12 layers, 2 processes --fsdp on two emulated ${CARD_GIB} GiB cards (fraction ${FRACTION:-none})"
ENVDOCTOR_GPU_MEMORY_FRACTION=$FRACTION train 240 $R/wide2.yaml --nproc 2 --fsdp
if [ -z "${TINY:-}" ] && [ ! -f $R/wide2/run_summary.json ]; then  # out of memory at CARD_GIB: once more, larger
  echo "== (b) again on two emulated $((CARD_GIB + 3)) GiB cards (the ${CARD_GIB} GiB run did not finish)"
  mv $R/wide2 $R/wide2-${CARD_GIB}gib; FRACTION=$($PY -c "import torch; print($((CARD_GIB + 3)) * 2**30 / torch.cuda.get_device_properties(0).total_memory)")
  ENVDOCTOR_GPU_MEMORY_FRACTION=$FRACTION train 200 $R/wide2.yaml --nproc 2 --fsdp
fi
rm -rf $R/wide2/base   # the float base (merge needs it; this bench does not): 18 GB of disk back
echo "== (c) the preflight's memory check, one emulated ${CARD_GIB} GiB card"
$PY bench/fsdp4_bench.py preflight $R $CARD_GIB 2>&1 | tee $OUT/preflight.json
echo "== report"
$PY bench/fsdp4_bench.py report $R 2>&1 | tee $OUT/report.json
for n in fits1 fits2 wide2; do cp $R/$n/run_summary.json $OUT/$n.run_summary.json 2>/dev/null; cp $R/$n/metrics.jsonl $OUT/$n.metrics.jsonl 2>/dev/null; done
rm -rf $R
