#!/usr/bin/env bash
# After bench/h200_train.sh on the same machine: the merge benchmark (train/merge.py vs plain PEFT, time
# and peak host memory), then `envdoctor merge` with its verification and `envdoctor check --model`.
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 NO_COLOR=1 OUT=${OUT:-/tmp}
RUN=/tmp/envdoctor-bench-run
echo "== merge benchmark"; python3 bench/bench_merge.py $RUN | tee $OUT/bench_merge.jsonl
echo "== envdoctor merge"; /usr/bin/time -v python3 -m envdoctor merge $RUN 2>&1 | grep -vE "Warning|warn\(|Loading weights" | grep -E "^\\$|^\{|verif|merged|FAIL|Maximum resident|Elapsed" 
echo "== second merge (no-op)"; python3 -m envdoctor merge $RUN 2>&1 | tail -1
