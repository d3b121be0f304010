#!/usr/bin/env bash
# The merge on the 8B shape: a runner run (if bench/h200_train.sh has not left one), then `envdoctor merge`
# in bf16 and in fp32, each verified, and the no-op second merge. bench/bench_merge.py compares time and
# peak host memory with the plain PEFT path.   bash bench/h200_merge.sh [--bench]
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 NO_COLOR=1 OUT=${OUT:-/tmp}
RUN=/tmp/envdoctor-bench-run
if [[ ! -f $RUN/run_summary.json ]]; then
  python3 bench/make_corpus.py
  echo "== envdoctor train (5 steps)"; python3 -m envdoctor train bench/configs/llama8b-random.yaml 2>&1 | grep -E "^done|validation|refus"
fi
if [[ "${1:-}" == "--bench" ]]; then echo "== merge benchmark"; python3 bench/bench_merge.py $RUN | tee $OUT/bench_merge.jsonl; fi
show() { grep -vE "Warning|warn\(|Loading weights" | grep -E "^\\$|^\{|verif|merged|FAIL|Maximum resident|Elapsed|rror|adapter changes|nothing to do"; }
echo "== envdoctor merge (bf16)"; /usr/bin/time -v python3 -m envdoctor merge $RUN 2>&1 | show | tee $OUT/merge_bf16.txt
rm -rf $RUN/merged
echo "== envdoctor merge --dtype float32"; /usr/bin/time -v python3 -m envdoctor merge $RUN --dtype float32 2>&1 | show | tee $OUT/merge_fp32.txt
echo "== second merge (no-op)"; /usr/bin/time -f "%e s" python3 -m envdoctor merge $RUN --dtype float32 2>&1 | tail -2 | tee -a $OUT/merge_fp32.txt
