#!/usr/bin/env bash
# The launcher (train/launch.py, torchrun underneath) and the runner's stop handling on two GPUs (NCCL):
#  1. `envdoctor train --demo --nproc 2` runs to the end (exit 0, world size 2 in run_summary.json)
#  2. the same, stopped with SIGINT to its process group in the second epoch (what a terminal's Ctrl-C
#     sends): exit 130, no traceback, one "interrupted" line, no rank left running; then the printed
#     resume command finishes the run (exit 0).
#   bash bench/h200x2_launch.sh        (carry .whl: bitsandbytes; ~2-3 min on 2×H200)
#   PY=.venv/bin/python bash bench/h200x2_launch.sh    on a CPU: the same with gloo
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 NO_COLOR=1
PY=${PY:-$(command -v python3)}
D=${D:-/tmp/envdoctor-launch}; rm -rf $D; mkdir -p $D
echo "== 1. demo, 2 processes"
timeout 300 $PY -m envdoctor train --demo --nproc 2 --python $PY --output-dir $D/full > $D/full.log 2>&1
echo "exit $?"; grep -E "^done|error|Traceback" $D/full.log | head -5
$PY -c "import json; d=json.load(open('$D/full/run_summary.json')); print({k: d.get(k) for k in ('world_size','device','first_loss','final_loss')})"
echo "== 2. the same, SIGINT to the process group in epoch 2 (after the first checkpoint)"
setsid $PY -m envdoctor train --demo --nproc 2 --python $PY --output-dir $D/stop > $D/stop.log 2>&1 &
leader=$!
for _ in $(seq 600); do grep -q "epoch 2/" $D/stop.log 2>/dev/null && break; sleep 0.2; done
kill -INT -- -$leader; wait $leader; echo "exit $?"
grep -cE "Traceback|SignalException" $D/stop.log | sed 's/^/traceback lines: /'
grep -E "interrupted|error" $D/stop.log | head -3
sleep 2; echo "ranks left running: $(pgrep -fc "qlora.py.*$D/stop" || true)"
resume=$(sed -n "s/.*continue with: envdoctor //p" $D/stop.log | head -1)
echo "resume: envdoctor $resume"
if [ -n "$resume" ]; then
  eval "timeout 300 $PY -m envdoctor $resume" > $D/resume.log 2>&1; echo "exit $?"
  grep -E "^done|resumed|error|Traceback" $D/resume.log | head -4
fi
rm -rf $D
