#!/usr/bin/env bash
# The memory calibration (issue #18) on one H200 in ONE device call of ≤ 9 min: every point is a JSON line in
# $OUT/calibration.jsonl, written as it is measured, with calibrate_memory.py's guards (allocated_before
# against the built base, checkpointing as observed, the repeat of each engine's first point at the end of its
# block: kind "block" lines). Random-weight models (no download) of the public Llama-3.1-8B / 3.2-1B shapes
# are saved once to /tmp/envdoctor-random-models.
#   bash bench/h200_calibrate.sh          # all four parts below, one after the other (~8.5 min)
#   bash bench/h200_calibrate.sh 8b-hf    # Llama-3.1-8B, hf-loop + hf-trainer   (budget 265 s)
#   bash bench/h200_calibrate.sh 8b-runner  # Llama-3.1-8B, envdoctor's runner   (budget 125 s)
#   bash bench/h200_calibrate.sh small    # Llama-3.2-1B, hf engines (80 s), then its runner (the rest)
#   bash bench/h200_calibrate.sh liger    # optional: 8B hf-loop with Liger kernels, if liger-kernel is there
# Each engine family is its own process (a family's base dies with it) with its own budget: a process
# stops before a point that would not finish, keeping the time for its block's repeats.
# Planned from the 2026-11-30 H200 lines (bench/results/2026-11-30-h200-calibration-unusable): 8B build
# 42 s (init + save + quantized load), 8B reload 15 s, 8B points 3-19 s (median ~6), runner 4-7 s, 1B points
# 2-13 s; ~1 s of guards per point. Replaying those timings through the budget logic: 8b-hf 28 points (7 fit
# + 7 hold-out per engine) + 2 repeats in ~268 s; 8b-runner 12 (6 + 6) + 1 repeat in ~122 s; 1B hf 10 + 2
# repeats in ~74 s; 1B runner ~6 + 1 repeat in ~40 s: ~8.5 min with the wheel install.
# CPU proof of the same script (tiny shapes, no GPU): DEVICE=cpu BIG=tiny SMALL=tiny-tied bash bench/h200_calibrate.sh
# Then, here: python bench/fit_memory.py bench/results/h200-calibration-*.jsonl (guard-flagged lines refused)
set -u
part=${1:-all}
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp}
DEVICE=${DEVICE:-cuda} BIG=${BIG:-llama-3.1-8b} SMALL=${SMALL:-llama-3.2-1b} PY=${PY:-python3}
if ! $PY -c "import bitsandbytes" 2>/dev/null; then  # the device has no bitsandbytes: the carried wheel
  [ -d /tmp/site/bitsandbytes ] || pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
# ALLOC=axolotl: the setting `axolotl train` gives torch's allocator when the user set none — its value for
# torch < 2.9; axolotl 0.19 with torch >= 2.9 sets PYTORCH_ALLOC_CONF=expandable_segments:True alone (no
# roundup_power2_divisions:16, which rounds block sizes up): what was measured on 2026-12-01 is kept as it is
case ${ALLOC:-} in
  axolotl) export PYTORCH_ALLOC_CONF=expandable_segments:True,roundup_power2_divisions:16
           export PYTORCH_CUDA_ALLOC_CONF=$PYTORCH_ALLOC_CONF ;;
  "") ;;
  *) echo "ALLOC=$ALLOC: expected axolotl or nothing"; exit 2 ;;
esac
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv \
  | tee $OUT/nvidia-smi.csv
start=$SECONDS
total=${BUDGET:-540}
left() { echo $(( total - (SECONDS - start) )); }
cal() { $PY bench/calibrate_memory.py --device $DEVICE --out $OUT/calibration.jsonl "$@" 2>&1 \
          | grep -vE "Warning|warnings.warn|^ *state\[|Loading weights|Writing model shards|^\{'train_runtime"; }
cap() { local l=$(( $(left) - $2 )); echo $(( l < $1 ? l : $1 )); }  # at most $1 s, leaving $2 s for what follows
# The allocator setting of a part's process: the runner under its own (it sets expandable segments when no
# variable is set); the Hugging Face engines under axolotl 0.19's for torch >= 2.9 (PYTORCH_ALLOC_CONF alone),
# or under axolotl's for torch < 2.9 (both variables, roundup_power2_divisions:16: the capped runs)
own() { ( unset PYTORCH_ALLOC_CONF PYTORCH_CUDA_ALLOC_CONF; cal "$@" ); }
# A blind round: the runner under its own setting, its lines in $OUT/blind.jsonl and its output in $OUT/blind.log,
# neither printed here (they are read once the fit they test is committed); only how many points were written
blind() { ( unset PYTORCH_ALLOC_CONF PYTORCH_CUDA_ALLOC_CONF
            $PY bench/calibrate_memory.py --device $DEVICE --out $OUT/blind.jsonl --engines runner "$@" \
              >> $OUT/blind.log 2>&1 )
          echo "blind: $(grep -c '"kind": "point"' $OUT/blind.jsonl 2>/dev/null) points in $OUT/blind.jsonl (not shown)"; }
FITGRIDS=1,2,3,4,5,6,6b,accum  # every grid the runner's constants were fitted on (rounds 1-7)
axo() { ( export PYTORCH_ALLOC_CONF=expandable_segments:True; unset PYTORCH_CUDA_ALLOC_CONF; cal "$@" ); }
axo28() { ( export PYTORCH_ALLOC_CONF=expandable_segments:True,roundup_power2_divisions:16
            export PYTORCH_CUDA_ALLOC_CONF=$PYTORCH_ALLOC_CONF; cal "$@" ); }
case $part in
  all) cal --shapes $BIG --engines hf-loop,hf-trainer --budget-s 265
       cal --shapes $BIG --engines runner --budget-s $(cap 125 140)
       cal --shapes $SMALL --engines hf-loop,hf-trainer --budget-s $(cap 80 55)
       cal --shapes $SMALL --engines runner --budget-s $(( $(left) - 10 )) ;;
  8b-hf) cal --shapes $BIG --engines hf-loop,hf-trainer --budget-s $(( $(left) - 15 )) ;;
  8b-runner) cal --shapes $BIG --engines runner --budget-s $(( $(left) - 15 )) ;;
  small) cal --shapes $SMALL --engines hf-loop,hf-trainer --budget-s $(cap 80 55)
         cal --shapes $SMALL --engines runner --budget-s $(( $(left) - 10 )) ;;
  liger) cal --shapes $BIG --engines hf-loop --liger --budget-s $(( $(left) - 15 )) ;;
  # Round 2 (GRID2: fit points where round 1 had none, fresh hold-out points, the 3B shape), one GPU each:
  #   CUDA_VISIBLE_DEVICES=0 bash bench/h200_calibrate.sh round2-8b & CUDA_VISIBLE_DEVICES=1 bash bench/h200_calibrate.sh round2-3b
  round2-8b) cal --grid 2 --shapes $BIG --engines hf-loop,hf-trainer --budget-s $(cap 200 80)
             cal --grid 2 --shapes $BIG --engines runner --budget-s $(( $(left) - 10 )) ;;
  round2-3b) cal --grid 2 --shapes ${MID:-llama-3.2-3b} --engines hf-loop,hf-trainer --budget-s $(cap 170 70)
             cal --grid 2 --shapes ${MID:-llama-3.2-3b} --engines runner --budget-s $(( $(left) - 10 )) ;;
  # The runner's points of both rounds again (after a change to the runner), one GPU each:
  #   CUDA_VISIBLE_DEVICES=0 bash bench/h200_calibrate.sh runner-r1 & CUDA_VISIBLE_DEVICES=1 bash bench/h200_calibrate.sh runner-r2
  runner-r1) cal --shapes $BIG --engines runner --budget-s $(cap 200 90)
             cal --shapes $SMALL --engines runner --budget-s $(( $(left) - 10 )) ;;
  runner-r2) cal --grid 2 --shapes $BIG --engines runner --budget-s $(cap 180 110)
             cal --grid 2 --shapes ${MID:-llama-3.2-3b} --engines runner --budget-s $(( $(left) - 10 )) ;;
  # Round 3 (GRID3: a blind hold-out at new sizes, fit points for the tied shapes' modules_to_save), one GPU each;
  # the runner first (its process sets the allocator), then the Hugging Face engines:
  #   CUDA_VISIBLE_DEVICES=0 bash bench/h200_calibrate.sh round3-8b & CUDA_VISIBLE_DEVICES=1 bash bench/h200_calibrate.sh round3-small
  round3-8b) cal --grid 3 --shapes $BIG --engines runner --budget-s $(cap 130 200)
             cal --grid 3 --shapes $BIG --engines hf-loop,hf-trainer --budget-s $(( $(left) - 10 )) ;;
  round3-small) cal --grid 3 --shapes ${MID:-llama-3.2-3b} --engines runner --budget-s $(cap 80 250)
                cal --grid 3 --shapes $SMALL --engines runner --budget-s $(cap 70 180)
                cal --grid 3 --shapes ${MID:-llama-3.2-3b} --engines hf-loop,hf-trainer --budget-s $(cap 100 80)
                cal --grid 3 --shapes $SMALL --engines hf-loop,hf-trainer --budget-s $(( $(left) - 10 )) ;;
  # The Hugging Face engines again with axolotl's allocator setting (`axolotl train` sets it when the user has
  # not: expandable_segments:True,roundup_power2_divisions:16), grids 1-3 in two calls of one GPU each:
  #   ALLOC=axolotl bash bench/h200_calibrate.sh axo-1 ; ALLOC=axolotl bash bench/h200_calibrate.sh axo-2
  axo-1) cal --grid 1 --shapes $BIG --engines hf-loop,hf-trainer --budget-s $(cap 300 190)
         cal --grid 3 --shapes ${MID:-llama-3.2-3b} --engines hf-loop,hf-trainer --budget-s $(cap 110 70)
         cal --grid 3 --shapes $SMALL --engines hf-loop,hf-trainer --budget-s $(( $(left) - 10 )) ;;
  axo-2) cal --grid 2 --shapes $BIG --engines hf-loop,hf-trainer --budget-s $(cap 200 250)
         cal --grid 2 --shapes ${MID:-llama-3.2-3b} --engines hf-loop,hf-trainer --budget-s $(cap 160 100)
         cal --grid 3 --shapes $BIG --engines hf-loop,hf-trainer --budget-s $(( $(left) - 10 )) ;;
  # Round 4 (GRID4, a blind hold-out): the runner under its own setting, the HF engines under axolotl's:
  #   ALLOC=axolotl bash bench/h200_calibrate.sh round4
  round4) own --grid 4 --shapes $BIG --engines runner --budget-s $(cap 90 380)
          cal --grid 4 --shapes $BIG --engines hf-loop,hf-trainer --budget-s $(cap 170 210)
          own --grid 4 --shapes ${MID:-llama-3.2-3b} --engines runner --budget-s $(cap 50 160)
          cal --grid 4 --shapes ${MID:-llama-3.2-3b} --engines hf-loop,hf-trainer --budget-s $(cap 70 90)
          own --grid 4 --shapes $SMALL --engines runner --budget-s $(cap 35 55)
          cal --grid 4 --shapes $SMALL --engines hf-loop,hf-trainer --budget-s $(( $(left) - 10 )) ;;
  # what a first round4 call had no time left to build (its budget guesses a first build high), next call:
  round4-rest) own --grid 4 --shapes $BIG --engines runner --budget-s $(cap 170 260)
          own --grid 4 --shapes ${MID:-llama-3.2-3b} --engines runner --budget-s $(cap 110 150)
          cal --grid 4 --shapes ${MID:-llama-3.2-3b} --engines hf-loop,hf-trainer --budget-s $(cap 120 50)
          own --grid 4 --shapes $SMALL --engines runner --budget-s $(( $(left) - 10 )) ;;
  # The hold-out points the estimate is most under, capped at the estimated reserved peak (--cap-at-estimate),
  # under axolotl's allocator setting, then under torch's default (no ALLOC):
  #   bash bench/h200_calibrate.sh capped
  capped) axo28 --grid cap --shapes $BIG --engines hf-loop,hf-trainer --cap-at-estimate --budget-s $(cap 130 230)
          axo28 --grid cap --shapes $SMALL --engines hf-loop,hf-trainer --cap-at-estimate --budget-s $(cap 60 180)
          cal --grid cap --shapes $BIG --engines hf-loop,hf-trainer --cap-at-estimate --budget-s $(cap 120 60)
          cal --grid cap --shapes $SMALL --engines hf-loop,hf-trainer --cap-at-estimate --budget-s $(( $(left) - 10 )) ;;
  # what the first `capped` call had no time left for (the 1B shape under axolotl's setting), and a control:
  # the same points capped at 0.8 × the estimate, below their allocated peak, must run out of memory
  capped-rest) axo28 --grid cap --shapes $SMALL --engines hf-loop,hf-trainer --cap-at-estimate --budget-s $(cap 120 100)
          axo28 --grid cap --shapes $SMALL --engines hf-loop,hf-trainer --cap-at-estimate --cap-scale 0.8 \
              --budget-s $(( $(left) - 10 )) ;;
  # The runner under a user's variable that turns expandable segments off (it keeps the user's setting): grid 1, 8B
  runner-caching) ( export PYTORCH_ALLOC_CONF=expandable_segments:False; unset PYTORCH_CUDA_ALLOC_CONF
                    cal --shapes $BIG --engines runner --budget-s $(( $(left) - 10 )) ) ;;
  # Round 5 (GRID5, a blind hold-out after the phase model): the runner under its own setting, the HF engines under
  # axolotl's for torch >= 2.9 (PYTORCH_ALLOC_CONF=expandable_segments:True alone), two calls:
  #   bash bench/h200_calibrate.sh round5-8b ; bash bench/h200_calibrate.sh round5-small
  round5-8b) own --grid 5 --shapes $BIG --engines runner --budget-s $(cap 150 360)
             axo --grid 5 --shapes $BIG --engines hf-loop,hf-trainer --budget-s $(( $(left) - 10 )) ;;
  round5-small) own --grid 5 --shapes ${MID:-llama-3.2-3b},$SMALL --engines runner --budget-s $(cap 170 330)
                axo --grid 5 --shapes ${MID:-llama-3.2-3b} --engines hf-loop,hf-trainer --budget-s $(cap 170 150)
                axo --grid 5 --shapes $SMALL --engines hf-loop,hf-trainer --budget-s $(( $(left) - 10 )) ;;
  # Round 6 (GRID6, a blind hold-out drawn at random): the runner under its own setting, the HF engines under
  # axolotl's for torch >= 2.9 (PYTORCH_ALLOC_CONF=expandable_segments:True alone), two calls:
  #   bash bench/h200_calibrate.sh round6-8b ; bash bench/h200_calibrate.sh round6-small
  round6-8b) own --grid 6 --shapes $BIG --engines runner --budget-s $(cap 170 340)
             axo --grid 6 --shapes $BIG --engines hf-loop,hf-trainer --budget-s $(( $(left) - 10 )) ;;
  round6-small) own --grid 6 --shapes ${MID:-llama-3.2-3b},$SMALL --engines runner --budget-s $(cap 170 330)
                axo --grid 6 --shapes ${MID:-llama-3.2-3b} --engines hf-loop,hf-trainer --budget-s $(cap 160 160)
                axo --grid 6 --shapes $SMALL --engines hf-loop,hf-trainer --budget-s $(( $(left) - 10 )) ;;
  # Round 6b (GRID6B): the runner alone on one-chunk batches with accumulation, 8B then 3B:
  #   bash bench/h200_calibrate.sh round6b
  round6b) own --grid 6b --shapes $BIG --engines runner --budget-s $(cap 200 120)
           own --grid 6b --shapes ${MID:-llama-3.2-3b} --engines runner --budget-s $(( $(left) - 10 )) ;;
  # round 6's 8B runner points the round6-8b call skipped, with round 6b, in one call (GRID6_REST)
  round6-rest) own --grid 6rest --shapes $BIG --engines runner --budget-s $(cap 420 90)
           own --grid 6rest --shapes ${MID:-llama-3.2-3b} --engines runner --budget-s $(( $(left) - 10 )) ;;
  # Round 7 (GRID7): the Hugging Face engines alone under axolotl's setting for torch >= 2.9, in one call:
  #   BUDGET=400 bash bench/h200_calibrate.sh round7-hf
  round7-hf) axo --grid 7 --shapes $BIG --engines hf-loop,hf-trainer --budget-s $(cap 200 190)
             axo --grid 7 --shapes ${MID:-llama-3.2-3b} --engines hf-loop,hf-trainer --budget-s $(cap 100 85)
             axo --grid 7 --shapes $SMALL --engines hf-loop,hf-trainer --budget-s $(( $(left) - 8 )) ;;
  # Round 8 (GRID8, the blind hold-out of the refit of 2026-12-01, fourth session): the runner under its own
  # setting, the Hugging Face engines under axolotl's for torch >= 2.9, two calls:
  #   BUDGET=560 bash bench/h200_calibrate.sh round8-8b ; BUDGET=540 bash bench/h200_calibrate.sh round8-small
  round8-8b) own --grid 8 --shapes $BIG --engines runner --budget-s $(cap 160 380)
             axo --grid 8 --shapes $BIG --engines hf-loop,hf-trainer --budget-s $(( $(left) - 8 )) ;;
  # what round8-8b's runner process had no time left for (its budget guessed the long accumulation points high):
  round8-runner) own --grid 8rest --shapes $BIG --engines runner --budget-s $(( $(left) - 8 )) ;;
  round8-small) own --grid 8 --shapes ${MID:-llama-3.2-3b},$SMALL --engines runner --budget-s $(cap 150 200)
                axo --grid 8 --shapes ${MID:-llama-3.2-3b} --engines hf-loop,hf-trainer --budget-s $(cap 110 90)
                axo --grid 8 --shapes $SMALL --engines hf-loop,hf-trainer --budget-s $(( $(left) - 8 )) ;;
  # Round 9 (GRID9, a second blind round of round 8's constants), two calls:
  #   BUDGET=460 bash bench/h200_calibrate.sh round9-8b ; BUDGET=320 bash bench/h200_calibrate.sh round9-small
  round9-8b) own --grid 9 --shapes $BIG --engines runner --budget-s $(cap 190 260)
             axo --grid 9 --shapes $BIG --engines hf-loop,hf-trainer --budget-s $(( $(left) - 8 )) ;;
  # what round9-8b's runner process had no time left for (its budget would not build the 8B base), alone:
  round9-runner) own --grid 9 --shapes $BIG --engines runner --budget-s $(( $(left) - 5 )) ;;
  round9-small) own --grid 9 --shapes ${MID:-llama-3.2-3b},$SMALL --engines runner --budget-s $(cap 100 180)
                axo --grid 9 --shapes ${MID:-llama-3.2-3b} --engines hf-loop,hf-trainer --budget-s $(cap 100 75)
                axo --grid 9 --shapes $SMALL --engines hf-loop,hf-trainer --budget-s $(( $(left) - 8 )) ;;
  # The runner after its one-pass loss (train/envdoctor_runner/head_loss.py, 2026-12-01, fifth session): all its
  # points of the fit grids again (one base per shape), and the blind rounds 8, 9 and 10 (blind(): not shown), in
  # three calls; the last one with the fit grid 1 of the 8B shape under torch's caching allocator:
  #   BUDGET=560 bash bench/h200_calibrate.sh runner3-small ; BUDGET=560 bash bench/h200_calibrate.sh runner3-8b
  #   BUDGET=560 bash bench/h200_calibrate.sh runner3-8b-blind
  runner3-small) timeout 90 $PY bench/head_loss_check.py --device $DEVICE | tee $OUT/head_loss_check.jsonl
                 own --grid $FITGRIDS --shapes ${MID:-llama-3.2-3b},$SMALL --engines runner --budget-s $(cap 400 130)
                 blind --grid 8,9,10 --shapes ${MID:-llama-3.2-3b},$SMALL --budget-s $(( $(left) - 8 )) ;;
  runner3-8b) own --grid $FITGRIDS --shapes $BIG --engines runner --budget-s $(( $(left) - 8 )) ;;
  runner3-8b-blind) blind --grid 8,9,10 --shapes $BIG --budget-s $(cap 330 150)
                    ( export PYTORCH_ALLOC_CONF=expandable_segments:False; unset PYTORCH_CUDA_ALLOC_CONF
                      cal --shapes $BIG --engines runner --budget-s $(( $(left) - 8 )) ) ;;
  # Round 11 (GRID11): the blind hold-out of the runner's phase model, in one call (blind(): not shown):
  #   BUDGET=540 bash bench/h200_calibrate.sh round11
  round11) blind --grid 11 --shapes $BIG --budget-s $(cap 330 150)
           blind --grid 11 --shapes ${MID:-llama-3.2-3b},$SMALL --budget-s $(( $(left) - 8 )) ;;
  # Gradient accumulation (GRID_ACCUM): the runner under its own setting, the HF engines under axolotl's for torch >= 2.9
  #   bash bench/h200_calibrate.sh accum
  accum) axo --grid accum --shapes $BIG --engines hf-loop,hf-trainer --budget-s $(cap 230 200)
         own --grid accum --shapes $BIG --engines runner --budget-s $(cap 110 90)
         axo --grid accum --shapes $SMALL --engines hf-loop,hf-trainer --budget-s $(cap 60 30)
         own --grid accum --shapes $SMALL --engines runner --budget-s $(( $(left) - 10 )) ;;
  # Traced (GRID_TRACE, --trace): where the slack comes from — the runner under its own setting, the Hugging Face
  # engines under axolotl's (torch >= 2.9: expandable_segments:True alone); each row gets a "trace" summary
  #   bash bench/h200_calibrate.sh trace
  trace) axo --grid trace --trace --shapes $BIG --engines hf-loop,hf-trainer --budget-s $(cap 200 330)
         own --grid trace --trace --shapes ${MID:-llama-3.2-3b},$SMALL --engines runner --budget-s $(cap 130 190)
         axo --grid trace --trace --shapes ${MID:-llama-3.2-3b},$SMALL --engines hf-loop,hf-trainer --budget-s $(cap 130 50)
         own --grid trace --trace --shapes $BIG --engines runner --budget-s $(( $(left) - 10 )) ;;
  *) echo "usage: bash bench/h200_calibrate.sh [all|8b-hf|8b-runner|small|liger|round2-8b|round2-3b|runner-r1|runner-r2|round3-8b|round3-small|axo-1|axo-2|round4|round4-rest|capped|capped-rest|runner-caching|round5-8b|round5-small|round6-8b|round6-small|round6b|round6-rest|round7-hf|round8-8b|round8-runner|round8-small|round9-8b|round9-runner|round9-small|runner3-small|runner3-8b|runner3-8b-blind|round11|accum|trace]"; exit 2 ;;
esac
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=memory.used --format=csv,noheader
f=$OUT/calibration.jsonl
[ -f $f ] || exit 0  # a blind part writes blind.jsonl only
echo "points: $(grep -c '"kind": "point"' $f) ($(grep -c '"refused": true' $f) refused, $(grep -c '"role": "repeat"' $f) repeats)" \
     "blocks: $(grep -c '"kind": "block"' $f), contaminated: $(grep '"kind": "block"' $f | grep -c '"contaminated": true')" \
     "in $((SECONDS - start)) s"
grep '"kind": "block"' $f | $PY -c "import json,sys; [print('block', b['shape'], b['engine'], 'CONTAMINATED' if b['contaminated'] else 'clean', b.get('peak_allocated_ratio', ''), '; '.join(b['reasons'])[:300]) for b in map(json.loads, sys.stdin)]"
