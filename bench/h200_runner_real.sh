#!/usr/bin/env bash
# The real runner against the estimate (issue #18): the calibration measures the runner's own modules through
# bench/hf_loop.py's loop; this runs `envdoctor train` itself (train/qlora.py: its data pipeline, its step, its
# validation) on a random-weight Llama-3.1-8B shape (no download, bench/configs/llama8b-random.yaml) and compares
# the peak it reports (run_summary.json: torch's max_memory_allocated / _reserved after the model is built) with
# what `envdoctor check --config` estimates for the same file. Configs: A, the seed's settings without
# modules_to_save; B, the seed's (modules_to_save: embed_tokens, lm_head, trained in place); C, drawn at random
# (random.Random(2026120103): seq 256-2048, micro batch 1-4, r 8-128, modules_to_save, accumulation 1-8); D, one
# loss chunk (512 × 2: 1022 shifted tokens) with modules_to_save and accumulation 4, where the runner's
# accumulation rule takes lm_head's gradient as already in the peak.
#   bash bench/h200_runner_real.sh     → $OUT/runner-real.jsonl, one line per config
# CPU proof of the plumbing (the demo's tiny model): BASE=train/configs/demo.yaml PY=.venv/bin/python bash bench/h200_runner_real.sh
set -u
export PYTHONUNBUFFERED=1 NO_COLOR=1 OUT=${OUT:-/tmp} PY=${PY:-python3}
if ! $PY -c "import bitsandbytes" 2>/dev/null; then  # the device has no bitsandbytes: the carried wheel
  [ -d /tmp/site/bitsandbytes ] || $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
$PY bench/make_corpus.py
WORK=${WORK:-/tmp/envdoctor-real-work}; mkdir -p "$WORK"
: > "$OUT/runner-real.jsonl"   # this call's configs only
for name in ${CONFIGS:-A B C D}; do
  cfg=$WORK/real-$name.yaml
  rm -f "$cfg"   # never an earlier call's file, if writing this one fails
  $PY - "$name" "$cfg" <<'CFG'
import math, random, sys, yaml
name, path = sys.argv[1], sys.argv[2]
import os
base = os.environ.get("BASE", "bench/configs/llama8b-random.yaml")
cfg = yaml.safe_load(open(base))
cfg["output_dir"] = f"/tmp/envdoctor-real-{name}"
cfg["datasets"] = [dict(d, path=os.path.join(os.path.dirname(os.path.abspath(base)), d["path"]))
                   for d in cfg["datasets"]]  # relative to the file it came from; this one is written elsewhere
if name == "B":
    cfg["lora_modules_to_save"] = ["embed_tokens", "lm_head"]
if name == "D":
    cfg.update(sequence_len=512, micro_batch_size=2, lora_r=32, lora_alpha=64, gradient_accumulation_steps=4,
               lora_modules_to_save=["embed_tokens", "lm_head"])
if name == "C":
    rng = random.Random(2026120103)
    cfg.update(sequence_len=int(round(math.exp(rng.uniform(math.log(256), math.log(2048))) / 8) * 8),
               micro_batch_size=rng.randint(1, 4), lora_r=rng.choice([8, 16, 32, 64, 128]),
               lora_modules_to_save=["embed_tokens", "lm_head"], gradient_accumulation_steps=rng.randint(1, 8))
    cfg["lora_alpha"] = 2 * cfg["lora_r"]
yaml.safe_dump(cfg, open(path, "w"), sort_keys=False)
print(name, {k: cfg.get(k) for k in ("sequence_len", "micro_batch_size", "lora_r", "gradient_accumulation_steps",
                                      "lora_modules_to_save")})
CFG
  $PY -m envdoctor check --config "$cfg" --json > "$WORK/check-$name.json" 2> "$WORK/check-$name.err"
  start=$SECONDS
  rm -rf "/tmp/envdoctor-real-$name"   # never resume a killed run of an earlier call
  $PY -m envdoctor train "$cfg" > "$WORK/train-$name.log" 2>&1; rc=$?
  tail -3 "$WORK/train-$name.log"
  $PY - "$name" "$cfg" "$WORK" "$rc" "$((SECONDS - start))" "$OUT" <<'CMP'
import json, sys, yaml
name, path, work, rc, secs, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
row = {"config": name, "rc": rc, "seconds": secs}
try:  # whatever fails, the config keeps its line, with the error
    cfg = yaml.safe_load(open(path))
    row.update({k: cfg.get(k) for k in ("sequence_len", "micro_batch_size", "lora_r", "gradient_accumulation_steps",
                                        "lora_modules_to_save")})
    memory = next(r for r in json.load(open(f"{work}/check-{name}.json"))["results"] if r["id"] == "config.memory")
    est = memory["data"] or {}
    row.update(check_status=memory["status"], check_message=memory["message"],
               estimated_allocated=est.get("peak_allocated_bytes"), estimated_reserved=est.get("peak_reserved_bytes"),
               allocator=est.get("allocator"))
    s = json.load(open(f"{cfg['output_dir']}/run_summary.json"))
    row.update(steps=s.get("steps"), final_loss=s.get("final_loss"),
               measured_allocated=s["peak_gpu_allocated_gib_per_rank"][0] * 2**30,
               measured_reserved=s["peak_gpu_reserved_gib_per_rank"][0] * 2**30)
    row.update(allocated_error=round(row["estimated_allocated"] / row["measured_allocated"] - 1, 4),
               reserved_error=round(row["estimated_reserved"] / row["measured_reserved"] - 1, 4))
except (OSError, KeyError, TypeError, ValueError, AttributeError, StopIteration, ZeroDivisionError, yaml.YAMLError) as exc:
    row["error"] = repr(exc)
print(json.dumps(row))
open(f"{out}/runner-real.jsonl", "a").write(json.dumps(row) + "\n")
CMP
  rm -rf "/tmp/envdoctor-real-$name"
done
