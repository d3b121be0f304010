#!/usr/bin/env python3
"""Fit the estimator's calibrated constants to bench/calibrate_memory.py's output, and print the table:
measured vs estimated peak for every grid point, the fit points and the held-out ones.

    python bench/fit_memory.py bench/results/h200-llama8b-calibration.json         (the plain loop, "peft")
    python bench/fit_memory.py bench/results/h200-llama8b-calibration-runner.json  (envdoctor's runner)

ATT_SAVED is fixed at 4 bytes (fp32 attention probabilities per layer, kept without checkpointing);
ACT_SCALE, ATT_GC, LOGIT_BYTES and SAVE_BYTES are solved by least squares on the "fit" rows.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from envdoctor.training import estimate as E
from envdoctor.training.config import resolve

SHAPE = E.Shape(4096, 14336, 32, 32, 8, 128256)
BASE = resolve(dict(load_in_4bit=True, bnb_4bit_use_double_quant=True, lora_r=64, lora_dropout=0.05,
                    lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                    optimizer="paged_adamw_8bit", gradient_checkpointing=True, bf16=True))


def terms(r: dict) -> tuple[list[float], float]:
    s, b, gc = r["seq"], r["micro"], r["gradient_checkpointing"]
    t, att = s * b, b * SHAPE.heads * s * s
    per_layer = E._layer_elements(SHAPE, True)
    e = E.estimate(SHAPE, dict(BASE, sequence_len=s, micro_batch_size=b, gradient_checkpointing=gc,
                               lora_modules_to_save=[]))
    fixed = sum(v for k, v in e.parts.items() if k in ("base (4-bit linears)", "embeddings + lm_head (fp32)",
                                                       "LoRA weights, grads, optimizer"))
    save = 2 * SHAPE.vocab * SHAPE.hidden if r["modules_to_save"] else 0
    if gc:
        return [t * 2 * per_layer, att, t * SHAPE.vocab, save], fixed + t * 2 * SHAPE.layers * SHAPE.hidden
    return [t * 2 * per_layer * SHAPE.layers, 0, t * SHAPE.vocab, save], fixed + E.ATT_SAVED * att * SHAPE.layers


def fit_runner(rows: list[dict]) -> None:
    """The runner's four constants: a grid search minimising the worst relative error on the fit rows
    (its peak is a max() of two phases, not a linear sum)."""
    import itertools
    fit = [r for r in rows if r["role"] == "fit"]

    def worst(c):
        E.CHUNK_BYTES, E.ACT_RUNNER, E.ACT_RUNNER_FULL, E.SAVE_BYTES_RUNNER = c
        return max(abs(E.estimate(SHAPE, config(r), engine="runner").peak / E.GiB / r["measured_gib"] - 1)
                   for r in fit)
    grid = itertools.product(np.arange(6.0, 12.01, 0.2), np.arange(0.8, 1.6, 0.01), np.arange(0.9, 1.5, 0.01),
                             np.arange(8.0, 11.01, 0.5))
    best = min(grid, key=worst)
    E.CHUNK_BYTES, E.ACT_RUNNER, E.ACT_RUNNER_FULL, E.SAVE_BYTES_RUNNER = best
    print(f"CHUNK_BYTES = {best[0]:.1f}, ACT_RUNNER = {best[1]:.2f}, ACT_RUNNER_FULL = {best[2]:.2f}, "
          f"SAVE_BYTES_RUNNER = {best[3]:.1f} (worst fit error {worst(best) * 100:.1f} %)")


def config(r: dict) -> dict:
    return dict(BASE, sequence_len=r["seq"], micro_batch_size=r["micro"], gradient_checkpointing=r["gradient_checkpointing"],
                lora_modules_to_save=["embed_tokens", "lm_head"] if r["modules_to_save"] else [])


def main() -> int:
    data = json.load(open(sys.argv[1]))
    rows = data["rows"]
    if data.get("engine") == "runner":
        fit_runner(rows)
        return table(rows, "runner")
    fit = [r for r in rows if r["role"] == "fit"]
    a = np.array([terms(r)[0] for r in fit], float)
    y = np.array([r["measured_gib"] * E.GiB - terms(r)[1] for r in fit], float)
    x, *_ = np.linalg.lstsq(a, y, rcond=None)
    print(f"ACT_SCALE = {x[0]:.3f}, ATT_GC = {x[1]:.2f}, LOGIT_BYTES = {x[2]:.3f}, SAVE_BYTES = {x[3]:.2f}")
    return table(rows, "peft")


def table(rows: list[dict], engine: str) -> int:
    print(f"{'role':<6} {'seq':>5} {'batch':>5} {'mts':>5} {'ckpt':>5} {'measured':>9} {'estimated':>9} {'error':>7}")
    for r in rows:
        est = E.estimate(SHAPE, config(r), engine=engine).peak / E.GiB
        print(f"{r['role']:<6} {r['seq']:>5} {r['micro']:>5} {str(r['modules_to_save']):>5} "
              f"{str(r['gradient_checkpointing']):>5} {r['measured_gib']:>8.2f}G {est:>8.2f}G "
              f"{(est / r['measured_gib'] - 1) * 100:>+6.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
