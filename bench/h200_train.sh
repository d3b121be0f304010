#!/usr/bin/env bash
# On a GPU machine: the estimator's calibration grid, then a real runner run on the 8B shape.
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 NO_COLOR=1 OUT=${OUT:-/tmp}
python3 - <<'PY'
import random
words = [''.join(random.Random(i).choice('abcdefghijklmnopqrstuvwxyz') for _ in range(random.Random(i).randint(2, 9))) for i in range(3000)]
import os; os.makedirs('/tmp/envdoctor-bench-corpus', exist_ok=True)
rng = random.Random(0)
for f in range(4):
    with open(f'/tmp/envdoctor-bench-corpus/part{f}.txt', 'w') as fh:
        fh.write('\n\n'.join(' '.join(rng.choice(words) for _ in range(120)) + '.' for _ in range(120)))
PY
if [[ "${1:-}" != "--runner-only" ]]; then
  echo "== calibration grid"; python3 bench/calibrate_memory.py --out $OUT/calib.json 2>&1 | grep -v Warning
fi
if [[ "${1:-}" != "--runner-only" ]]; then
  echo "== plain transformers + peft + bitsandbytes loop, same shape and settings (baseline)"
  python3 bench/calibrate_memory.py --out $OUT/baseline.json --points 2048x2 --steps 6 2>&1 | grep -E "^\{|built"
fi
echo "== runner on the 8B shape"; python3 -m envdoctor train bench/configs/llama8b-random.yaml 2>&1 | grep -vE "^step [0-9]+/[0-9]+ .*eta|Warning|warn\(" | tail -25
cp /tmp/envdoctor-bench-run/run_summary.json $OUT/run_summary.json 2>/dev/null
python3 -c "import json; d=json.load(open('/tmp/envdoctor-bench-run/run_summary.json')); print({k: d[k] for k in ('steps','first_loss','final_loss','val_loss','tokens_per_s','peak_memory_gib','notes')})"
