#!/usr/bin/env bash
# Issue 17's training table on one H200 (random-weight Llama-3.1-8B shape, no download): the plain loop
# (PEFT / bitsandbytes docs), the same + Liger kernels, envdoctor's runner; config A (r=64, seven projections)
# and config B (A + modules_to_save: embed_tokens, lm_head, the seed's config). Each run in its own process.
#
#   bash bench/h200_train_table.sh 1      config A: plain, runner, Liger      (~6.5 min incl. install + model save)
#   bash bench/h200_train_table.sh 2      config B: plain, runner, Liger      (~7 min)
#   bash bench/h200_train_table.sh all    both in one call                    (~13 min: over one call's limit)
# then, here: python bench/train_table.py <part 1's train_table.jsonl> <part 2's train_table.jsonl>
#
# Per run: STEPS timed optimizer steps at the config's accumulation 4 (the first untimed), then LOSS_STEPS more
# at LOSS_ACCUM for the loss comparison (same batches, same seed in every engine; all steps' losses compared).
# The default (6 + 50 at accumulation 1) is what fits one call per config; LOSS_ACCUM=4 LOSS_STEPS=44 compares
# 50 steps of the config's own accumulation but needs four calls, ~25 min of device time (BUDGET_S=480 and
# RUNS=plain:A / plain:B / runner:A,liger:A / runner:B,liger:B: a plain run alone is ~6.5 min). BUDGET_S caps the runs of a call: each run stops stepping before its share runs out, and the
# line says how many steps it ran. TABLE_ARGS: more arguments (the CPU proof: TABLE_ARGS="--device cpu --shape tiny").
set -u
export PYTHONUNBUFFERED=1 NO_COLOR=1 OUT=${OUT:-/tmp} TOKENIZERS_PARALLELISM=false
if compgen -G ".whl/*.whl" >/dev/null; then  # once per machine (parts may run side by side on two GPUs)
  [ -d /tmp/site/bitsandbytes ] || pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -2
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
case "${1:-1}" in
  1) runs=plain:A,runner:A,liger:A ;;
  2) runs=plain:B,runner:B,liger:B ;;
  all) runs=plain:A,runner:A,liger:A,plain:B,runner:B,liger:B ;;
  *) echo "usage: bash bench/h200_train_table.sh 1|2|all" >&2; exit 2 ;;
esac
runs=${RUNS:-$runs}
python3 -c "import bitsandbytes, liger_kernel" 2>&1 | tail -1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
python3 bench/train_table_run.py --runs "$runs" --out "$OUT/train_table.jsonl" \
  --steps "${STEPS:-6}" --liger-steps "${LIGER_STEPS:-6}" --loss-steps "${LOSS_STEPS:-50}" \
  --loss-accum "${LOSS_ACCUM:-1}" --budget-s "${BUDGET_S:-440}" ${TABLE_ARGS:-} 2>&1 \
  | grep --line-buffered -vE "Warning|warn\(|^ *warnings.warn|Loading weights|it/s\]$" | tee "$OUT/train_table.log"
python3 bench/train_table.py "$OUT/train_table.jsonl" > "$OUT/train_table.md"
