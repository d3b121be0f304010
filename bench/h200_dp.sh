#!/usr/bin/env bash
# Data parallel on 2 GPUs with an UNEVEN micro-batch count (the layout that used to hang): a random-weight
# Llama-3.1-8B-shape base (bench/configs/llama8b-random.yaml: NF4, LoRA r64, seq 2048, micro batch 2,
# accumulation 4, lora_dropout 0 so the two runs' losses are comparable), 66 training chunks → 33 micro
# batches → 9 optimizer steps, the last of ONE micro batch (on 2 GPUs, rank 1 runs a weight-0 pass).
# CHUNKS=34 gives the layout of issue #13 (17 micro batches, 5 steps: a shorter steady window).
# Runs `envdoctor train` on 1 GPU, then with --nproc 2; prints steady-state tokens/s of each (optimizer steps
# 2..8: start-up, the first step and the short last one excluded), the ratio, and the loss agreement.
#   bash bench/h200_dp.sh          (carry .whl: bitsandbytes 0.50.2 is installed from it when missing)
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 NO_COLOR=1 OUT=${OUT:-/tmp}
if ! python3 -c "import bitsandbytes" 2>/dev/null && ls .whl/bitsandbytes-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/bitsandbytes-*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
R=/tmp/envdoctor-dp; rm -rf $R; mkdir -p $R
CHUNKS=${CHUNKS:-66} python3 - <<'PREP'
import json, os, random, yaml
# CHUNKS + 2 documents of 1500 random words: each one chunk (< 2048 tokens with the learned 4096-token
# BPE); val_set_size 2 leaves CHUNKS for training.
words = ["".join(random.Random(i).choice("abcdefghijklmnopqrstuvwxyz") for _ in range(random.Random(i).randint(2, 9)))
         for i in range(3000)]
rng = random.Random(0)
with open("/tmp/envdoctor-dp/corpus.jsonl", "w") as fh:
    for _ in range(int(os.environ["CHUNKS"]) + 2):
        fh.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(1500)) + "."}) + "\n")
cfg = yaml.safe_load(open("bench/configs/llama8b-random.yaml"))
for n in (1, 2):
    yaml.safe_dump(dict(cfg, datasets=[{"path": "/tmp/envdoctor-dp/corpus.jsonl"}], output_dir=f"/tmp/envdoctor-dp/run{n}",
                        num_epochs=1, val_set_size=2, lora_dropout=0.0), open(f"/tmp/envdoctor-dp/gpu{n}.yaml", "w"))
PREP
quiet() { grep -vE "Warning|warn\(|^ *warnings.warn|^.{0,40}step [0-9]+/[0-9]+ |Loading weights" | grep -E "data:|note:|error|Error|rank|done:|validation" ; }
echo "== 1 GPU (builds and saves the random base once)"
CUDA_VISIBLE_DEVICES=0 timeout 330 python3 -m envdoctor train $R/gpu1.yaml --nproc 1 2>&1 | quiet | cut -c1-220
mkdir -p $R/run2 && ln -s $R/run1/base $R/run2/base   # the same base: not saved again
echo "== 2 GPUs (--nproc 2)"
timeout 240 python3 -m envdoctor train $R/gpu2.yaml --nproc 2 2>&1 | quiet | cut -c1-220
python3 - <<'REPORT'
import json
def rows(n):
    try:
        return [r for r in map(json.loads, open(f"/tmp/envdoctor-dp/run{n}/metrics.jsonl")) if "loss" in r]
    except OSError:
        return []
res = {}
for n in (1, 2):
    r = rows(n)
    if len(r) < 4:
        res[f"gpu{n}"] = {"steps_logged": len(r)}
        continue
    a, b = r[0], r[-2]  # after step 1 .. after the last full step
    res[f"gpu{n}"] = {"steps": len(r), "steady_tokens_per_s": round((b["tokens"] - a["tokens"]) / (b["elapsed_s"] - a["elapsed_s"])),
                      "steady_steps": f"{a['step'] + 1}..{b['step']}", "first_loss": r[0]["loss"], "final_loss": r[-1]["loss"]}
one, two = rows(1), rows(2)
if len(one) == len(two) > 0 and "steady_tokens_per_s" in res.get("gpu2", {}):
    res["tokens_per_s_ratio_2_over_1"] = round(res["gpu2"]["steady_tokens_per_s"] / res["gpu1"]["steady_tokens_per_s"], 3)
    res["loss_max_rel_diff"] = float(f"{max(abs(x['loss'] - y['loss']) / abs(x['loss']) for x, y in zip(one, two)):.2e}")
for n in (1, 2):
    try:
        s = json.load(open(f"/tmp/envdoctor-dp/run{n}/run_summary.json"))
        res[f"gpu{n}"].update(peak_memory_gib=round(s["peak_memory_gib"] or 0, 1), val_loss=s["val_loss"])
    except (OSError, KeyError):
        pass
print(json.dumps(res, indent=1))
REPORT
