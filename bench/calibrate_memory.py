#!/usr/bin/env python3
"""Measure peak GPU memory (allocated and reserved) of QLoRA training over a grid of shapes and settings,
for each engine of bench/hf_loop.py, next to the estimator's prediction: the data bench/fit_memory.py
fits envdoctor's constants on.

    PYTHONPATH=src python bench/calibrate_memory.py --out $OUT/calibration.jsonl --budget-s 540 \
        [--shapes llama-3.1-8b,...] [--engines hf-loop,hf-trainer,runner] [--roles fit,holdout] [--liger]
    PYTHONPATH=src python bench/calibrate_memory.py --device cpu --shapes tiny --out /tmp/c.jsonl  (the code
        paths on a CPU; measures nothing)

One JSON line per point, written as it is measured (a killed run keeps what it had), after a first
"header" line (device, versions). Points are ordered by shape, then engine family (hf-loop and
hf-trainer share one prepared base; the runner has its own), so each base is built once. --budget-s
stops before a point (or a base) that would not finish in time, from the durations seen so far, keeping
the time for the block's repeats.

Guards (the 2026-11-30 run had none, and its points contaminated each other: bench/results/2026-11-30-h200-
calibration-unusable). After each point hf_loop.release puts the reused base back as loaded (peft's unload
leaves the trained modules_to_save copies on it) and drops bitsandbytes' global optimizer overrides (Trainer
registers every Embedding there, for ever). Each point line records allocated_before / base_allocated
(torch.cuda.memory_allocated() before the point and after building the base; on a CPU the bytes of the
live tensors): a point more than 1 % above is refused (not measured) and its block ends; checkpointing_at_build
and checkpointing_on (the decoder layers' flags as observed, at build and after the run); repairs (what
release had to put back) and `contaminated` (reasons; empty when clean). At the end of each block (one base:
shape × engine family) the first point of each engine is measured again ("role": "repeat", "repeat_of":
its id), and a "kind": "block" line says whether the peaks agree within 2 %; fit_memory.py fits only the
points of clean blocks. --fresh-process measures every point in a new process that loads the saved random
model (no carry-over possible; one base load per point, ≈15 s for an 8B shape).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import alloc_trace  # noqa: E402  (bench/alloc_trace.py, beside this file)
import hf_loop  # noqa: E402  (bench/hf_loop.py, beside this file)

MTS = ["embed_tokens", "lm_head"]
# (seq, micro batch, r, modules_to_save, gradient checkpointing, role). Fit points span the terms the
# constants multiply (tokens, seq², r, modules_to_save, no checkpointing); hold-out points are other
# combinations over seq 256–8192, micro batch 1–8, r 8–128, all of which fit on an H200 for every engine.
GRID = {
    # In the order a budget-cut run should keep them (points() alternates fit and hold-out): the fit points
    # that pin a term each first (tokens, modules_to_save, no checkpointing, r 16 / 128), the longest last.
    "llama-3.1-8b": [
        (512, 1, 64, False, True, "fit"), (2048, 2, 64, False, True, "fit"), (1024, 2, 64, True, True, "fit"),
        (1024, 1, 64, False, False, "fit"), (2048, 1, 16, False, True, "fit"), (2048, 1, 128, False, True, "fit"),
        (4096, 1, 64, True, True, "fit"), (2048, 1, 64, False, True, "fit"), (512, 2, 64, True, False, "fit"),
        (4096, 2, 64, False, True, "fit"),
        (2048, 2, 64, True, True, "holdout"),   # the seed's config
        (8192, 1, 64, False, True, "holdout"), (256, 8, 64, False, True, "holdout"),
        (1024, 4, 8, True, True, "holdout"), (512, 1, 64, True, False, "holdout"),
        (512, 4, 128, False, True, "holdout"), (1024, 2, 64, False, False, "holdout"),
        (4096, 4, 32, False, True, "holdout"), (8192, 2, 64, True, True, "holdout"),
    ],
    "llama-3.2-3b": [
        (2048, 2, 64, False, True, "fit"), (1024, 4, 64, True, True, "fit"), (1024, 1, 32, False, False, "fit"),
        (4096, 4, 16, False, True, "holdout"), (1024, 1, 128, True, False, "holdout"),
        (512, 8, 64, False, True, "holdout"),
    ],
    "llama-3.2-1b": [
        (2048, 4, 64, False, True, "fit"), (1024, 2, 64, True, True, "fit"), (512, 4, 16, False, False, "fit"),
        (4096, 8, 32, False, True, "holdout"), (256, 2, 8, True, False, "holdout"),
        (8192, 2, 128, True, True, "holdout"),
    ],
    "tiny": [
        (256, 2, 8, False, True, "fit"), (128, 1, 16, True, True, "fit"), (128, 2, 8, False, False, "holdout"),
        (256, 1, 16, True, False, "holdout"),
    ],
    "tiny-tied": [(256, 2, 8, True, True, "fit"), (128, 1, 16, True, False, "holdout")],
}
# Round 2 (measured 2026-11-30 after the first fit and its model revision: the round-1 hold-out points had
# been seen by then): fit points where round 1 had none (modules_to_save without checkpointing for the HF
# engines, long sequences), and hold-out points never used for any choice, including the 3B shape that
# round 1 did not reach.
GRID2 = {
    "llama-3.1-8b": [
        (2048, 1, 64, True, False, "fit"), (3072, 2, 64, True, True, "holdout"),
        (8192, 1, 32, False, True, "fit"), (6144, 1, 16, False, True, "holdout"),
        (1024, 2, 16, True, False, "fit"), (768, 4, 128, True, True, "holdout"),
        (768, 2, 32, False, False, "holdout"),
    ],
    "llama-3.2-3b": [
        (2048, 2, 64, True, True, "holdout"), (4096, 2, 16, False, True, "holdout"),
        (1024, 4, 128, True, True, "holdout"), (512, 8, 8, False, True, "holdout"),
        (8192, 1, 64, True, True, "holdout"), (1024, 1, 32, False, False, "holdout"),
        (256, 4, 64, True, False, "holdout"),
    ],
    "tiny": [(128, 1, 8, True, False, "fit"), (64, 2, 16, False, True, "holdout")],   # CPU proofs
}
# Round 3 (2026-11-30, after the runner's change and its refit on rounds 1-2): hold-out points never used
# for any choice, at sizes no earlier round had (odd sequence lengths and micro batches): a blind test of the
# constants as committed before it ran; and fit points for what rounds 1-2 had least of: modules_to_save
# on the tied 3B / 1B shapes (the runner keeps fp32 copies there).
GRID3 = {
    "llama-3.1-8b": [
        (1000, 3, 24, True, True, "holdout"), (3000, 1, 96, False, True, "holdout"),
        (384, 6, 64, False, False, "holdout"), (2500, 2, 64, True, True, "holdout"),
        (6000, 2, 16, False, True, "holdout"),
    ],
    "llama-3.2-3b": [
        (2048, 1, 32, True, True, "fit"), (1536, 3, 64, True, True, "holdout"), (512, 2, 64, True, False, "fit"),
        (3000, 2, 32, False, True, "holdout"), (768, 2, 16, True, False, "holdout"),
    ],
    "llama-3.2-1b": [
        (4096, 1, 64, True, True, "fit"), (6000, 1, 64, True, True, "holdout"), (1024, 4, 32, True, False, "fit"),
        (2000, 4, 128, False, True, "holdout"), (700, 2, 8, True, False, "holdout"),
    ],
    "tiny": [(100, 3, 8, True, True, "fit"), (70, 2, 16, False, False, "holdout")],   # CPU proofs
}
# Round 4 (2026-12-01, after the Hugging Face engines' reserve under expandable segments was fitted on
# rounds 1-3 measured again with axolotl's allocator setting): a blind test of the runner and of both
# Hugging Face engines under that setting, at sizes no round had, all hold-out, never fitted on.
GRID4 = {
    "llama-3.1-8b": [
        (1500, 2, 48, True, True, "holdout"), (5000, 1, 32, False, True, "holdout"),
        (640, 3, 16, True, False, "holdout"), (320, 5, 112, False, True, "holdout"),
        (7000, 1, 8, True, True, "holdout"), (1200, 1, 80, False, False, "holdout"),
    ],
    "llama-3.2-3b": [
        (2600, 3, 40, True, True, "holdout"), (450, 7, 24, False, False, "holdout"),
        (7500, 1, 128, False, True, "holdout"), (900, 2, 96, True, False, "holdout"),
    ],
    "llama-3.2-1b": [
        (3500, 2, 56, True, True, "holdout"), (1800, 5, 12, False, False, "holdout"),
        (260, 8, 100, True, True, "holdout"), (8000, 1, 72, False, True, "holdout"),
    ],
    "tiny": [(90, 3, 12, True, True, "holdout"), (60, 2, 20, False, False, "holdout")],   # CPU proofs
}
# Capped runs (2026-12-01, --cap-at-estimate): the hold-out points whose reserved peak the estimate was most
# under, run again with torch's allocator capped at the estimated reserved peak: does the run fit in it?
GRID_CAP = {
    "llama-3.1-8b": [(5000, 1, 32, False, True, "holdout"), (1000, 3, 24, True, True, "holdout")],
    "llama-3.2-1b": [(1800, 5, 12, False, False, "holdout"), (256, 2, 8, True, False, "holdout")],
    "tiny": [(60, 2, 20, False, False, "holdout")],   # CPU proof
}
# Round 5 (2026-12-01, after the Hugging Face engines' allocated peak became the largest of a step's phases and
# was refitted on the fit points of rounds 1-3): a blind test of every engine at sizes no round had, all hold-out,
# the Hugging Face engines under axolotl's setting for torch >= 2.9 (expandable_segments:True alone).
GRID5 = {
    "llama-3.1-8b": [
        (1800, 3, 40, True, True, "holdout"), (3600, 1, 112, False, True, "holdout"),
        (448, 2, 24, True, False, "holdout"), (5500, 2, 8, False, True, "holdout"),
        (640, 4, 72, False, False, "holdout"), (2304, 2, 128, True, True, "holdout"),
        (7600, 1, 56, True, True, "holdout"),
    ],
    "llama-3.2-3b": [
        (1300, 3, 48, True, True, "holdout"), (5200, 1, 20, False, True, "holdout"),
        (600, 3, 112, True, False, "holdout"), (350, 6, 32, False, False, "holdout"),
    ],
    "llama-3.2-1b": [
        (2900, 2, 88, True, True, "holdout"), (1100, 6, 16, False, True, "holdout"),
        (480, 3, 64, True, False, "holdout"), (7200, 1, 10, False, True, "holdout"),
    ],
    "tiny": [(80, 3, 24, True, True, "holdout"), (50, 2, 10, False, False, "holdout")],   # CPU proofs
}
# Gradient accumulation (2026-12-01, after the Hugging Face phases stopped counting the held gradients twice:
# no calibration point had accumulated): hold-out points with accumulation 4-8 (the 7th element), short
# sequences where the end of backward — the modules_to_save gradients — is the phase at the peak, and the seed.
GRID_ACCUM = {
    "llama-3.1-8b": [(512, 1, 64, True, True, "holdout", 8), (2048, 2, 64, True, True, "holdout", 4),
                     (768, 1, 32, True, True, "holdout", 8), (1024, 1, 64, False, True, "holdout", 4)],
    "llama-3.2-1b": [(256, 2, 16, True, True, "holdout", 8), (512, 1, 64, True, False, "holdout", 4)],
    "tiny": [(64, 1, 8, True, True, "holdout", 3)],   # CPU proof
}
# Traced points (2026-12-01, --trace): hold-out points whose slack (reserved − allocated) the smooth reserve
# model cannot follow — the largest and the smallest slack of a kind — to see which blocks leave the holes.
GRID_TRACE = {
    "llama-3.1-8b": [(5000, 1, 32, False, True, "holdout"), (6144, 1, 16, False, True, "holdout"),
                     (512, 1, 64, True, False, "holdout"), (7000, 1, 8, True, True, "holdout")],
    "llama-3.2-3b": [(2048, 1, 32, True, True, "holdout"), (2048, 2, 64, True, True, "holdout"),
                     (512, 2, 64, True, False, "holdout")],
    "llama-3.2-1b": [(256, 2, 8, True, False, "holdout"), (700, 2, 8, True, False, "holdout"),
                     (8192, 2, 128, True, True, "holdout")],
}
# Round 6 (2026-12-01, third session of the day): a blind hold-out drawn at random, not picked
# (random.Random(20261201): seq log-uniform 256-8192 rounded to 8, micro batch 1-8, checkpointing 70 %,
# modules_to_save 50 %, r from 8-128, accumulation 1/1/2/4/8; tokens at most 16384 with checkpointing, and
# without it what the card holds: 2600 (8B), 4000 (3B), 6000 (1B)), measured before the runner's accumulation
# rule and any refit that followed were committed.
GRID6 = {
    "llama-3.1-8b": [
        (416, 4, 12, True, True, "holdout", 1), (2232, 2, 96, True, True, "holdout", 8),
        (1760, 6, 32, False, True, "holdout", 4), (6232, 2, 8, False, True, "holdout", 2),
        (752, 3, 128, True, False, "holdout", 2), (472, 8, 64, False, True, "holdout", 2),
        (400, 5, 24, False, False, "holdout", 2), (384, 2, 128, False, True, "holdout", 2),
    ],
    "llama-3.2-3b": [
        (1608, 6, 128, False, True, "holdout", 1), (1192, 5, 80, True, True, "holdout", 1),
        (616, 3, 8, True, True, "holdout", 1), (1128, 2, 12, False, True, "holdout", 2),
    ],
    "llama-3.2-1b": [
        (1400, 1, 96, False, True, "holdout", 8), (1176, 8, 24, True, True, "holdout", 1),
        (872, 2, 8, False, True, "holdout", 2), (272, 5, 16, True, False, "holdout", 2),
        (368, 6, 32, True, True, "holdout", 4),
    ],
    "tiny": [(72, 2, 12, True, True, "holdout", 2)],   # CPU proof
}
# Round 6b (drawn the same way, random.Random(202612012)): the runner alone, modules_to_save on, one loss chunk
# (seq × micro ≤ 1024, seq 256-1024) and accumulation 2-8 — where the runner's accumulation rule of that session
# takes the lm_head gradient as already in its peak (8B: trained in place) and where it does not (3B: tied, copies).
GRID6B = {
    "llama-3.1-8b": [(600, 1, 128, True, True, "holdout", 2), (376, 2, 8, True, False, "holdout", 4),
                     (472, 1, 16, True, False, "holdout", 4), (272, 3, 8, True, True, "holdout", 8),
                     (344, 1, 128, True, False, "holdout", 2), (312, 1, 128, True, False, "holdout", 8)],
    "llama-3.2-3b": [(512, 1, 16, True, True, "holdout", 4), (528, 1, 8, True, False, "holdout", 4),
                     (968, 1, 8, True, True, "holdout", 8)],
    "tiny": [(40, 2, 8, True, True, "holdout", 2)],   # CPU proof
}
# What round 6's first call had no time left for (its budget guessed the 8B runner's first build high: 1 of 8
# points), measured in one call with round 6b: the 8B runner's other seven points of GRID6, then GRID6B.
GRID6_REST = {"llama-3.1-8b": GRID6["llama-3.1-8b"][1:] + GRID6B["llama-3.1-8b"],
              "llama-3.2-3b": GRID6B["llama-3.2-3b"], "tiny": GRID6B["tiny"]}
# Round 7 (drawn the same way as round 6, random.Random(20261207), four points a shape): the Hugging Face engines
# alone, a second blind round for the Hugging Face path's reserve refitted before round 6.
GRID7 = {
    "llama-3.1-8b": [(720, 1, 48, False, True, "holdout", 1), (1648, 4, 64, True, True, "holdout", 1),
                     (528, 4, 128, False, True, "holdout", 4), (704, 5, 12, False, True, "holdout", 8)],
    "llama-3.2-3b": [(448, 2, 96, False, False, "holdout", 4), (2592, 3, 64, True, True, "holdout", 8),
                     (432, 1, 24, False, True, "holdout", 8), (392, 1, 48, False, True, "holdout", 8)],
    "llama-3.2-1b": [(1752, 1, 96, True, True, "holdout", 1), (680, 6, 8, False, True, "holdout", 8),
                     (680, 6, 16, False, False, "holdout", 4), (1216, 1, 48, True, False, "holdout", 1)],
    "tiny": [(56, 2, 8, False, True, "holdout", 2)],   # CPU proof
}
# Round 8 (2026-12-01, fourth session): the blind hold-out of the runner's reserve with its peak-gated terms and of
# the Hugging Face path's reserve refitted on rounds 1-7 (with Trainer's FIXED_HEAD), measured after both were
# committed. Drawn by `python bench/draw_round.py 20261208 llama-3.1-8b=8 llama-3.2-3b=4 llama-3.2-1b=4`, then one
# point added on each shape where the draw did not reach an end of issue #18's span: 8B seq 7800 (the draw's longest was
# 4920), 1B micro batch 8 (its largest was 6).
GRID8 = {
    "llama-3.1-8b": [(1504, 1, 48, False, True, "holdout", 1), (2176, 4, 128, False, True, "holdout", 8),
                     (320, 4, 12, False, True, "holdout", 1), (1200, 6, 8, False, True, "holdout", 1),
                     (280, 6, 24, True, True, "holdout", 1), (4920, 1, 32, True, True, "holdout", 2),
                     (3376, 1, 32, False, True, "holdout", 1), (336, 3, 16, True, False, "holdout", 4),
                     (7800, 1, 96, True, True, "holdout", 2)],
    "llama-3.2-3b": [(1872, 4, 48, True, True, "holdout", 1), (3720, 3, 24, True, True, "holdout", 1),
                     (256, 2, 48, True, True, "holdout", 1), (3960, 4, 48, True, True, "holdout", 1)],
    "llama-3.2-1b": [(264, 3, 112, True, False, "holdout", 1), (3088, 3, 128, True, True, "holdout", 8),
                     (376, 3, 12, False, True, "holdout", 1), (504, 6, 16, True, False, "holdout", 2),
                     (1024, 8, 24, False, True, "holdout", 1)],
    "tiny": [(48, 3, 16, True, True, "holdout", 2)],   # CPU proof
}
# What round8-8b's runner process had no time left for (one of its nine points measured): the other eight.
GRID8_REST = {"llama-3.1-8b": GRID8["llama-3.1-8b"][1:], "tiny": GRID8["tiny"]}
# Round 9 (2026-12-01, fourth session): a second blind round of the same constants as round 8 (nothing changed after
# round 8 was seen), drawn by `python bench/draw_round.py 20261209 llama-3.1-8b=6 llama-3.2-3b=3 llama-3.2-1b=3`.
GRID9 = {
    "llama-3.1-8b": [(696, 6, 32, False, True, "holdout", 8), (2960, 1, 64, False, True, "holdout", 2),
                     (1064, 4, 80, False, True, "holdout", 8), (288, 3, 112, False, False, "holdout", 1),
                     (1672, 4, 32, False, True, "holdout", 8), (672, 2, 16, True, True, "holdout", 1)],
    "llama-3.2-3b": [(3752, 3, 80, True, True, "holdout", 1), (720, 4, 80, False, True, "holdout", 8),
                     (768, 1, 12, False, True, "holdout", 1)],
    "llama-3.2-1b": [(584, 4, 64, True, True, "holdout", 1), (2256, 1, 64, True, True, "holdout", 4),
                     (1376, 4, 112, False, True, "holdout", 4)],
    "tiny": [(40, 3, 8, False, True, "holdout", 2)],   # CPU proof
}
# Round 10 (2026-12-01, fifth session): the blind hold-out of the runner with its one-pass loss (head_loss.py),
# with rounds 8-9 again, drawn by `python bench/draw_round.py 20261210 llama-3.1-8b=8 llama-3.2-3b=4 llama-3.2-1b=4`
# before any point of the new runner was measured.
GRID10 = {
    "llama-3.1-8b": [(744, 2, 16, False, False, "holdout", 1), (1216, 1, 128, False, True, "holdout", 1),
                     (600, 8, 8, True, True, "holdout", 4), (1832, 6, 112, True, True, "holdout", 4),
                     (5336, 1, 80, True, True, "holdout", 1), (472, 3, 12, True, False, "holdout", 4),
                     (384, 6, 96, True, True, "holdout", 1), (2248, 4, 80, True, True, "holdout", 1)],
    "llama-3.2-3b": [(384, 8, 8, False, True, "holdout", 1), (1008, 7, 8, True, True, "holdout", 2),
                     (1432, 5, 12, True, True, "holdout", 1), (4144, 2, 64, False, True, "holdout", 1)],
    "llama-3.2-1b": [(672, 1, 112, True, False, "holdout", 4), (488, 8, 12, False, True, "holdout", 1),
                     (280, 5, 64, False, False, "holdout", 1), (272, 3, 128, True, True, "holdout", 8)],
    "tiny": [(56, 2, 8, True, True, "holdout", 2)],   # CPU proof
}
# Round 11 (2026-12-01, fifth session): the blind hold-out of the runner's phase model (estimate.runner_phases),
# fitted on rounds 1-10 of the one-pass runner and committed before this round was drawn: drawn by
# `python bench/draw_round.py 20261211 llama-3.1-8b=10 llama-3.2-3b=5 llama-3.2-1b=5`, then the two ends of the
# span the draw missed (8B seq 8192 at micro batch 1, 1B seq 256), their other fields drawn by draw_round.draw
# from random.Random(2026121100).
GRID11 = {
    "llama-3.1-8b": [(1368, 2, 128, False, True, "holdout", 4), (400, 4, 80, False, True, "holdout", 1),
                     (6296, 2, 48, False, True, "holdout", 2), (304, 5, 16, True, False, "holdout", 1),
                     (520, 3, 48, False, True, "holdout", 4), (960, 8, 128, True, True, "holdout", 1),
                     (1608, 8, 80, False, True, "holdout", 2), (4384, 2, 24, True, True, "holdout", 8),
                     (2176, 5, 64, True, True, "holdout", 1), (1224, 3, 112, False, True, "holdout", 1),
                     (8192, 1, 32, True, True, "holdout", 1)],
    "llama-3.2-3b": [(2368, 2, 24, True, True, "holdout", 2), (6128, 1, 8, False, True, "holdout", 1),
                     (2824, 1, 24, False, True, "holdout", 8), (320, 8, 48, False, True, "holdout", 4),
                     (2912, 5, 8, True, True, "holdout", 8)],
    "llama-3.2-1b": [(640, 1, 24, False, True, "holdout", 4), (1944, 2, 112, False, True, "holdout", 8),
                     (280, 5, 128, False, True, "holdout", 4), (584, 5, 48, False, False, "holdout", 1),
                     (696, 3, 80, False, True, "holdout", 1), (256, 5, 48, True, True, "holdout", 2)],
    "tiny": [(64, 2, 8, True, True, "holdout", 2)],   # CPU proof
}
GRIDS = {"1": GRID, "2": GRID2, "3": GRID3, "4": GRID4, "5": GRID5, "6": GRID6, "6b": GRID6B,
         "6rest": GRID6_REST, "7": GRID7, "8": GRID8, "8rest": GRID8_REST, "9": GRID9, "10": GRID10, "11": GRID11,
         "accum": GRID_ACCUM,
         "cap": GRID_CAP, "trace": GRID_TRACE}
TRACE_ENTRIES = 3_000_000
# Guesses for the first measurement of their kind, seconds (then the largest seen is used): building a
# base per GB of bf16 weights (init + save + quantized load), and a point per token of a step.
BUILD_S_PER_GB = 5.0
POINT_S_PER_KTOKEN = 1.2
POINT_S_FIXED = 5.0
MARGIN = 1.2


def point_seconds(history: list[tuple[float, float]], ktokens: float) -> float:
    """A point's expected duration from (ktokens, seconds) of the points measured so far (its engine's if
    any): the quickest of those at least as large (time grows with tokens), else the largest scaled up by
    tokens (its fixed part too: conservative), with a margin. Scaling the worst seconds-per-token of a
    small point instead (the 2026-11-30 run) stopped that run with half its budget left."""
    if not history:
        return MARGIN * (POINT_S_FIXED + POINT_S_PER_KTOKEN * ktokens)
    bigger = [sec for kt, sec in history if kt >= ktokens]
    if bigger:
        return MARGIN * min(bigger)
    kt, sec = max(history)
    return MARGIN * sec * ktokens / kt


def points(shapes: list[str], engines: list[str], roles: list[str], max_points: int = 0,
           grid: dict | None = None) -> list[dict]:
    """The grid in the order it is measured: by shape, then engine family (one base each); within a family
    fit and hold-out points alternate and each point is measured by every engine of the family before the
    next, so a run cut short by its budget still has both roles and both engines."""
    out = []
    grid = GRID if grid is None else grid
    for shape in shapes:
        fits = [g for g in grid.get(shape, []) if g[5] == "fit" and "fit" in roles]
        held = [g for g in grid.get(shape, []) if g[5] == "holdout" and "holdout" in roles]
        order = [g for pair in zip(fits, held) for g in pair] + fits[len(held):] + held[len(fits):]
        order = order[:max_points] if max_points else order
        for family in ("hf", "runner"):
            members = [e for e in engines if (e == "runner") == (family == "runner")]
            for seq, micro, r, mts, gc_on, role, *accum in order:
                for engine in members:
                    out.append(dict(shape=shape, family=family, engine=engine, seq=seq, micro=micro, r=r,
                                    modules_to_save=mts, gradient_checkpointing=gc_on, role=role,
                                    **({"accum": accum[0]} if accum and accum[0] > 1 else {})))
    return out


def grid_names(text: str) -> str:
    """--grid's value: names of GRIDS joined by commas."""
    bad = [g for g in text.split(",") if g not in GRIDS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown grid(s) {bad}; known: {sorted(GRIDS)}")
    return text


def joined(names: str) -> dict:
    """The grids named (comma-joined) as one, shape by shape in the order named; a point that two grids share
    (same seq, micro, r, modules_to_save, checkpointing, accumulation) is measured once, with the first one's role."""
    out: dict[str, list] = {}
    for name in names.split(","):
        for shape, pts in GRIDS[name].items():
            seen = {(*g[:5], *(g[6:] or (1,))) for g in out.get(shape, [])}
            out.setdefault(shape, []).extend(g for g in pts if (*g[:5], *(g[6:] or (1,))) not in seen)
    return out


def point_config(p: dict) -> dict:
    return hf_loop.base_config(sequence_len=p["seq"], micro_batch_size=p["micro"], lora_r=p["r"],
                               lora_alpha=2 * p["r"], gradient_checkpointing=p["gradient_checkpointing"],
                               lora_modules_to_save=list(MTS) if p["modules_to_save"] else [],
                               gradient_accumulation_steps=p.get("accum", 1))


def process_allocator(engine: str) -> str:
    """The allocator setting this process's points run under: the variables' if set, else the runner's own
    expandable segments, and torch's default caching allocator for the Hugging Face engines (this bench is
    not axolotl, which would set one: ALLOC=axolotl in h200_calibrate.sh does)."""
    from envdoctor.training import allocator as A
    if engine == "runner":
        return A.allocator_in_force(os.environ, "runner")[0]
    return A.torch_allocator(os.environ)[0]  # as torch reads them: nothing here sets them as axolotl would


def predict(shape: str, cfg: dict, engine: str) -> dict:
    """The estimator's numbers for this point (envdoctor on PYTHONPATH), or why not."""
    try:
        from envdoctor.training import estimate as E
        allocator = process_allocator(engine)
        e = E.estimate(E.Shape.from_config(hf_loop.SHAPES[shape]), cfg, engine=engine, allocator=allocator)
        return dict(estimated_allocated=e.peak, estimated_reserved=getattr(e, "reserved", None),
                    estimated_allocator=allocator, parts={k: round(v) for k, v in e.parts.items()})
    except Exception as exc:  # noqa: BLE001 - a prediction is a bonus: the measurement is what counts
        return dict(estimate_error=f"{type(exc).__name__}: {exc}")


def header(device: str, liger: bool) -> dict:
    import importlib.metadata as md
    import torch
    versions = {}
    for dist in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "liger-kernel"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    out = dict(kind="header", device=device, versions=versions, liger=liger, time=time.strftime("%Y-%m-%dT%H:%M:%S"))
    if device.startswith("cuda"):
        torch.cuda.init()
        torch.zeros(1, device=device)
        free, total = torch.cuda.mem_get_info()
        # With only a one-element tensor: the CUDA context (and the allocator's first 2 MiB segment).
        out.update(gpu=torch.cuda.get_device_name(), total_bytes=total, context_bytes=total - free
                   - torch.cuda.memory_reserved(), pytorch_cuda_alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
                   pytorch_alloc_conf=os.environ.get("PYTORCH_ALLOC_CONF"))
    return out


BASELINE_TOLERANCE = 0.01   # a point's baseline may exceed the freshly built base's by this fraction
REPEAT_TOLERANCE = 0.02     # the repeat of a block's first point must reproduce its peak within this


def guards_header() -> dict:
    return dict(baseline_tolerance=BASELINE_TOLERANCE, repeat_tolerance=REPEAT_TOLERANCE)


def baseline(device: str) -> int:
    """What is allocated now: torch's allocator on a GPU; on a CPU the bytes of the live tensors."""
    import torch
    if device.startswith("cuda"):
        return torch.cuda.memory_allocated()
    return hf_loop.live_tensors()[1]


def point_id(p: dict) -> str:
    return "{shape}/{engine}/{seq}x{micro}/r{r}/{m}/{c}".format(
        m="mts" if p["modules_to_save"] else "no-mts", c="ckpt" if p["gradient_checkpointing"] else "no-ckpt", **p) + (
        f"/accum{p['accum']}" if p.get("accum", 1) > 1 else "")


def measure(base, snapshot, p: dict, args, base_allocated: int) -> tuple[dict, object]:
    """One point on the reused `base`, with the guards: returns (row, base). The row carries
    allocated_before / base_allocated (refused when over by more than BASELINE_TOLERANCE: not measured),
    checkpointing_on as observed on the decoder layers (at build and after the run), the repairs release()
    made, and `contaminated`: the reasons this row must not be fitted (empty when clean)."""
    import torch
    cfg = point_config(p)
    shape_cfg = hf_loop.SHAPES[p["shape"]]
    t0 = time.monotonic()
    row = dict(kind="point", id=point_id(p), **p, liger=args.liger, reentrant=args.reentrant and p["family"] == "hf")
    if args.cap_at_estimate:  # not a calibration point: fit_memory.py neither fits nor judges it
        row["role"] = "capped"
    hf_loop._reset(args.device)
    row.update(allocated_before=baseline(args.device), base_allocated=base_allocated,
               baseline_source="torch.cuda.memory_allocated" if args.device.startswith("cuda") else "live tensors")
    row["contaminated"] = reasons = []
    excess = row["allocated_before"] - base_allocated
    if base is None:
        reasons.append("no base: an earlier point failed and its adapters could not be taken off")
        row["refused"] = True
        return row, base
    if excess > BASELINE_TOLERANCE * base_allocated:
        reasons.append(f"baseline {row['allocated_before']} B is {excess} B ({excess / base_allocated:.1%}) above "
                       f"the built base's {base_allocated} B: memory of an earlier point is still allocated")
        row["refused"] = True
        row["seconds"] = round(time.monotonic() - t0, 2)
        return row, base
    t = None
    try:
        t = hf_loop.build_peft_model(base, cfg, p["engine"], args.reentrant)
        row["checkpointing_at_build"] = hf_loop.checkpointing_on(t.model)
        run = hf_loop.run_trainer if p["engine"] == "hf-trainer" else hf_loop.run_steps
        if args.cap_at_estimate:  # torch's allocator may hold no more than the estimate's reserved peak
            said = predict(p["shape"], cfg, p["engine"])
            est = said.get("estimated_reserved")
            if not est:  # uncapped, it would be recorded as a capped run that fitted
                raise RuntimeError(f"no estimate to cap at: {said.get('estimate_error')}")
            row["cap_bytes"] = capped(est * args.cap_scale, args.device)
            row["cap_scale"] = args.cap_scale
        if args.trace:  # not a calibration point either: recording costs time, not memory, but say so
            row["role"] = "traced"
            before = torch.cuda.memory._snapshot()
            # the runner's checkpointed chunked loss fails under Python stack capture (SystemError: cross_entropy_loss
            # returned NULL, 2026-12-01): its events are recorded without stacks
            torch.cuda.memory._record_memory_history(max_entries=TRACE_ENTRIES, stacks="python",
                                                     context=None if p["engine"] == "runner" else "all")
        try:
            row.update(run(t, cfg, args.steps, args.device, shape_cfg["vocab_size"]))
        finally:
            if args.cap_at_estimate:
                capped(None, args.device)
            if args.trace:
                after = torch.cuda.memory._snapshot()
                torch.cuda.memory._record_memory_history(enabled=None)
                row["trace"] = alloc_trace.summarize(before, after)
                # a full ring buffer has dropped its oldest events: the replay from `before` is then wrong
                row["trace"]["truncated"] = row["trace"]["events"] >= TRACE_ENTRIES
                row["trace"]["torch_end"] = dict(reserved=torch.cuda.memory_reserved(),
                                                 allocated=torch.cuda.memory_allocated())
        row["checkpointing_on"] = hf_loop.checkpointing_on(t.model)
        base = hf_loop.release(t, p["engine"], snapshot)
        row.update(repairs=t.repairs, bnb_overrides_cleared=t.overrides_cleared)
    except Exception as exc:  # noqa: BLE001 - one failing point (out of memory too) must not lose the others
        row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        if not isinstance(exc, torch.OutOfMemoryError):
            traceback.print_exc()
        base = _recover(t, base, snapshot, args.device)
    for when in ("checkpointing_at_build", "checkpointing_on"):
        if when in row and row[when] is not bool(p["gradient_checkpointing"]):
            reasons.append(f"{when} observed {row[when]!r}, the point asks for {p['gradient_checkpointing']}")
    if base is not None and (left := snapshot.differences(base)):
        reasons.append("the base is not as loaded after release: " + "; ".join(left[:3]))
    row.update(predict(p["shape"], cfg, p["engine"]))
    row["seconds"] = round(time.monotonic() - t0, 2)
    return row, base


def capped(cap: float | None, device: str) -> int | None:
    """Cap torch's allocator on `device` at `cap` bytes (None: lift the cap). Over the cap the allocator frees
    its cached blocks (under expandable segments it unmaps the free pages too) and retries before it raises
    OutOfMemoryError: what a card with that much memory for torch would do."""
    import torch
    if not device.startswith("cuda"):
        return None if cap is None else int(cap)
    total = torch.cuda.mem_get_info()[1]
    torch.cuda.set_per_process_memory_fraction(1.0 if cap is None else min(1.0, cap / total))
    return None if cap is None else int(cap)


def block_verdict(first: dict, repeat: dict) -> dict:
    """The repeat of a block's first point against it: the block (shape × engine) is contaminated unless
    the peak (allocated and reserved; on a CPU the baseline) is reproduced within REPEAT_TOLERANCE."""
    out = dict(kind="block", shape=first["shape"], engine=first["engine"], first=first["id"], repeat=repeat["id"],
               reasons=[])
    for key in ("peak_allocated", "peak_reserved", "allocated_before"):
        a, b = first.get(key), repeat.get(key)
        if not a or b is None:
            continue
        out[f"{key}_ratio"] = round(b / a, 4)
        if abs(b / a - 1) > REPEAT_TOLERANCE:
            out["reasons"].append(f"repeat {key} {b} B vs first {a} B ({b / a - 1:+.1%}; "
                                  f"allowed ±{REPEAT_TOLERANCE:.0%})")
    for row, name in ((first, "first"), (repeat, "repeat")):
        if row.get("error") or row.get("contaminated"):
            out["reasons"].append(f"{name} point not clean: {row.get('error') or row['contaminated'][0]}")
    out["contaminated"] = bool(out["reasons"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "calibration.jsonl"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shapes", default="llama-3.1-8b,llama-3.2-3b,llama-3.2-1b")
    ap.add_argument("--engines", default=",".join(hf_loop.ENGINES))
    ap.add_argument("--roles", default="fit,holdout")
    ap.add_argument("--grid", type=grid_names, default="1",
                    help="which grid of points (GRID, GRID2, ...): a name, or names joined by commas (one base for "
                         "all)")
    ap.add_argument("--max-points", type=int, default=0, help="at most this many grid points per shape (0: all)")
    ap.add_argument("--steps", type=int, default=2, help="optimizer steps per point (the first is the warm-up)")
    ap.add_argument("--budget-s", type=float, default=540.0, help="stop cleanly before this many seconds")
    ap.add_argument("--model-dir", default="/tmp/envdoctor-random-models",
                    help="random models are saved here once per shape, and reused")
    ap.add_argument("--liger", action="store_true", help="Liger kernels in transformers' Llama (hf engines)")
    ap.add_argument("--reentrant", action="store_true", help="reentrant checkpointing in the hf engines")
    ap.add_argument("--cap-at-estimate", action="store_true",
                    help="run each point with torch's allocator capped at the estimated reserved peak: does it "
                         "fit in what the estimate says (rows get role 'capped' and cap_bytes; an OOM is the error)")
    ap.add_argument("--cap-scale", type=float, default=1.0,
                    help="with --cap-at-estimate: the cap is this × the estimate (a control below 1 must run out)")
    ap.add_argument("--trace", action="store_true",
                    help="record the allocator's events of each point and describe its reserved peak (alloc_trace.py)")
    ap.add_argument("--fresh-process", action="store_true",
                    help="each point in its own process that loads the saved random model (no carry-over at all; "
                         "costs one base load per point: ≈15 s for an 8B shape on an H200)")
    ap.add_argument("--point", help=argparse.SUPPRESS)  # internal: the one point a --fresh-process child measures
    args = ap.parse_args(argv)
    started = time.monotonic()
    shapes, engines = args.shapes.split(","), args.engines.split(",")
    for name, known in (("shape", hf_loop.SHAPES), ("engine", hf_loop.ENGINES)):
        bad = [x for x in (shapes if name == "shape" else engines) if x not in known]
        if bad:
            ap.error(f"unknown {name}(s) {bad}; known: {sorted(known)}")
    if args.trace and not args.device.startswith("cuda"):
        ap.error("--trace records CUDA allocator events: it needs --device cuda")
    if "runner" in engines and args.device.startswith("cuda"):  # its allocator setting, before torch loads
        if len(engines) > 1:
            ap.error("the runner sets torch's allocator for its whole process (envdoctor_runner/allocator.py): "
                     "measure --engines runner in a process of its own")
        from envdoctor_runner import allocator
        allocator.configure()
    if args.liger and (why := hf_loop.apply_liger()):
        ap.error(why)
    from envdoctor.training.estimate import Shape  # noqa: F401 - fail early without PYTHONPATH=src
    if args.point:
        return _child(args)
    todo = points(shapes, engines, args.roles.split(","), args.max_points, joined(args.grid))
    out = open(args.out, "a", buffering=1)
    out.write(json.dumps(dict(header(args.device, args.liger), **guards_header(), fresh_process=args.fresh_process,
                              grid=args.grid))
              + "\n")
    rates = dict(build=BUILD_S_PER_GB, seen_build=False, seen_point=False)
    history: dict[str, list[tuple[float, float]]] = {}  # engine → (ktokens, seconds) of its measured points
    done = 0

    def left() -> float:
        return args.budget_s - (time.monotonic() - started)

    def need(p: dict) -> float:
        first_child = args.fresh_process and not rates["seen_point"]  # then the rate includes the load
        load = rates["build"] * _bf16_gb(hf_loop.SHAPES[p["shape"]]) if first_child else 0.0
        seen = history.get(p["engine"]) or [x for h in history.values() for x in h]
        return point_seconds(seen, p["seq"] * p["micro"] * p.get("accum", 1) / 1000) + load

    def emit(row: dict) -> None:
        out.write(json.dumps(row) + "\n")
        print(json.dumps({k: row.get(k) for k in ("id", "role", "repeat_of", "allocated_before", "checkpointing_on",
                                                  "peak_allocated", "peak_reserved", "estimated_allocated",
                                                  "seconds", "error", "contaminated")}), flush=True)

    for (shape, family), block in _blocks(todo):
        gb = _bf16_gb(hf_loop.SHAPES[shape])
        if not args.fresh_process and left() < rates["build"] * gb + need(block[0]) * 2:
            print(f"budget: {left():.0f} s left, not enough to build {shape} for {family}", flush=True)
            break
        firsts: dict[str, dict] = {}
        if args.fresh_process:
            measured = lambda p: _in_child(p, args)  # noqa: E731
        else:
            base = snapshot = None
            hf_loop._reset(args.device)
            t0 = time.monotonic()
            folder = hf_loop.save_random_model(shape, Path(args.model_dir) / shape, args.device)
            base = hf_loop.load_base(folder, family, point_config(block[0]), args.device, args.reentrant)
            snapshot = hf_loop.BaseSnapshot(base)
            hf_loop.warm_up(base, args.device, hf_loop.SHAPES[shape]["vocab_size"])
            hf_loop._reset(args.device)
            base_allocated = baseline(args.device)
            took = time.monotonic() - t0
            rates["build"] = max(rates["build"] if rates["seen_build"] else 0.0, took / gb)
            rates["seen_build"] = True
            out.write(json.dumps(dict(kind="build", shape=shape, family=family, seconds=round(took, 1),
                                      allocated=base_allocated, live_tensors=hf_loop.live_tensors(),
                                      checkpointing_on=snapshot.checkpointing)) + "\n")
            state = dict(base=base)

            def measured(p: dict, state=state, snapshot=snapshot, base_allocated=base_allocated) -> dict:
                row, state["base"] = measure(state["base"], snapshot, p, args, base_allocated)
                return row
        stopped, dirty = None, False
        planned_firsts = {q["engine"]: q for q in reversed(block)}
        for p in block:
            reserve = sum(need(q) for q in planned_firsts.values())  # the repeats must still fit
            if left() < need(p) + reserve:
                stopped = f"budget: {left():.0f} s left, the rest of {shape}/{family} skipped for its repeats"
                print(stopped, flush=True)
                break
            row = measured(p)
            emit(row)
            done += 1
            if not row.get("refused"):  # --fresh-process: the child's load is part of every point
                history.setdefault(p["engine"], []).append(
                    (p["seq"] * p["micro"] * p.get("accum", 1) / 1000, row.get("seconds_with_load", row["seconds"])))
                rates["seen_point"] = True
            firsts.setdefault(p["engine"], row)
            if row.get("refused"):
                dirty = True
                stopped = f"{row['id']} refused: {row['contaminated'][0]}; the rest of {shape}/{family} skipped"
                print(stopped, flush=True)
                break
        for engine, first in firsts.items():  # the first point of each engine again, at the end of its block
            p = {k: first[k] for k in ("shape", "family", "engine", "seq", "micro", "r", "modules_to_save",
                                       "gradient_checkpointing", "accum") if k in first}
            if dirty or left() < need(p):  # a repeat on a base known to be dirty would only be refused too
                verdict = dict(kind="block", shape=shape, engine=engine, first=first["id"], contaminated=True,
                               reasons=[f"no repeat: {'a point was refused' if dirty else 'no time left'}"])
            else:
                row = measured(dict(p, role="repeat"))
                row.update(id=row["id"] + "/repeat", repeat_of=first["id"])
                emit(row)
                verdict = block_verdict(first, row)
            if stopped:
                verdict["stopped"] = stopped
            out.write(json.dumps(verdict) + "\n")
            print(json.dumps(verdict), flush=True)
        if not args.fresh_process:
            state.clear()
            base = snapshot = measured = None
            hf_loop._reset(args.device)
    out.write(json.dumps(dict(kind="end", points=done, of=len(todo), seconds=round(time.monotonic() - started, 1)))
              + "\n")
    print(f"{done} of {len(todo)} points in {time.monotonic() - started:.0f} s → {args.out}", flush=True)
    return 0


def _blocks(todo: list[dict]):
    """(shape, family) → its points, in measuring order."""
    out: dict[tuple, list] = {}
    for p in todo:
        out.setdefault((p["shape"], p["family"]), []).append(p)
    return out.items()


def _in_child(p: dict, args) -> dict:
    """--fresh-process: the point measured by a new interpreter that loads the saved random model."""
    import subprocess
    cmd = [sys.executable, __file__, "--point", json.dumps(p), "--device", args.device, "--steps", str(args.steps),
           "--model-dir", args.model_dir] + (["--reentrant"] if args.reentrant else []) + (
           ["--liger"] if args.liger else [])
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True)
    rows = [line for line in done.stdout.splitlines() if line.startswith('{"kind": "point"')]
    if done.returncode or not rows:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return dict(kind="point", id=point_id(p), **p, error=f"child exited {done.returncode}: {tail[0][:300]}",
                    contaminated=[], seconds=round(time.monotonic() - t0, 2))
    row = json.loads(rows[-1])
    row["seconds_with_load"] = round(time.monotonic() - t0, 2)
    return row


def _child(args) -> int:
    p = json.loads(args.point)
    hf_loop._reset(args.device)
    t0 = time.monotonic()
    folder = hf_loop.save_random_model(p["shape"], Path(args.model_dir) / p["shape"], args.device)
    base = hf_loop.load_base(folder, p["family"], point_config(p), args.device, args.reentrant)
    snapshot = hf_loop.BaseSnapshot(base)
    hf_loop.warm_up(base, args.device, hf_loop.SHAPES[p["shape"]]["vocab_size"])
    hf_loop._reset(args.device)
    load_s = time.monotonic() - t0
    row, _ = measure(base, snapshot, p, args, baseline(args.device))
    row.update(fresh_process=True, load_seconds=round(load_s, 1))
    print(json.dumps(row), flush=True)
    return 0


def _bf16_gb(c: dict) -> float:
    h, i, n, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    kv = c["num_key_value_heads"] * c.get("head_dim", h // c["num_attention_heads"])
    q = c["num_attention_heads"] * c.get("head_dim", h // c["num_attention_heads"])
    params = n * (2 * h * q + 2 * h * kv + 3 * h * i) + v * h * (1 if c.get("tie_word_embeddings") else 2)
    return max(params * 2 / 1e9, 0.1)


def _recover(t, base, snapshot, device: str):
    """After a failed point: the base without the point's adapters, put back as loaded; None when they
    cannot be taken off (the block then ends: its later points are refused by their baseline)."""
    try:
        if t is None or t.model is None:
            raise RuntimeError("adapters half attached")
        base = hf_loop.release(t, t.engine, snapshot)
    except Exception:  # noqa: BLE001
        base = None
    hf_loop._reset(device)
    return base


if __name__ == "__main__":
    raise SystemExit(main())
