#!/usr/bin/env bash
# On a GPU machine, random-weight Llama-3.1-8B shape (no download):
#   1. the training benchmark: the plain transformers+peft+bitsandbytes loop vs envdoctor's runner, seq 2048,
#      micro batch 2, grad accum 4, same process layout, one after the other in this call;
#   2. the estimator against the runner on points it was not fitted on;
#   3. a real `envdoctor train` run (it saves the bf16 base for the merge benchmark).
#   bash bench/h200_train.sh [--calibrate]     (--calibrate: also the plain loop's fitting grid)
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 NO_COLOR=1 OUT=${OUT:-/tmp}
python3 bench/make_corpus.py
quiet() { grep -vE "Warning|warn\(|^ *warnings.warn"; }
if [[ "${1:-}" == "--calibrate" ]]; then
  echo "== calibration grid (plain loop)"; python3 bench/calibrate_memory.py --out $OUT/calib.json 2>&1 | quiet
fi
echo "== benchmark: plain loop (prepare_model_for_kbit_training, model(labels=...))"
python3 bench/calibrate_memory.py --engine peft --points 2048x2 --accum 4 --steps 4 --out $OUT/bench_plain.json 2>&1 | quiet
echo "== benchmark: envdoctor runner (bf16 frozen base, fp32 trainables, chunked cross-entropy)"
python3 bench/calibrate_memory.py --engine runner --points 2048x2 --accum 4 --steps 4 --out $OUT/bench_runner.json 2>&1 | quiet
python3 - <<'RATIO'
import json, os
o = os.environ["OUT"]
p, r = (json.load(open(f"{o}/bench_{n}.json"))["rows"][0] for n in ("plain", "runner"))
print(json.dumps({"plain": {k: p[k] for k in ("tokens_per_s", "measured_gib")},
                  "runner": {k: r[k] for k in ("tokens_per_s", "measured_gib")},
                  "tokens_per_s_ratio": round(r["tokens_per_s"] / p["tokens_per_s"], 3),
                  "memory_ratio": round(r["measured_gib"] / p["measured_gib"], 3)}))
RATIO
echo "== the runner's memory: fitting points, then held-out points (bench/fit_memory.py fits and prints the table)"
python3 bench/calibrate_memory.py --engine runner --points 1024x1,4096x1,1024x2m,2048x1m,512x2n --steps 2 --role fit --out $OUT/calib_runner.json 2>&1 | quiet
python3 bench/calibrate_memory.py --engine runner --points 2048x1,8192x1,512x4,4096x2,1024x4m,1536x2m,1024x1n,2048x1n --steps 2 --role check --out $OUT/calib_runner2.json 2>&1 | quiet
echo "== envdoctor train on the 8B shape"; python3 -m envdoctor train bench/configs/llama8b-random.yaml 2>&1 | grep -vE "^.{0,40}step [0-9]+/[0-9]+ |Warning|warn\(" | tail -25
cp /tmp/envdoctor-bench-run/run_summary.json $OUT/run_summary.json 2>/dev/null
python3 -c "import json; d=json.load(open('/tmp/envdoctor-bench-run/run_summary.json')); print({k: d[k] for k in ('steps','first_loss','final_loss','val_loss','tokens_per_s','peak_memory_gib','notes')})"
