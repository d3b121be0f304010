#!/usr/bin/env python3
"""Draw a blind hold-out round for the memory calibration (bench/calibrate_memory.py's GRID literals), at random
and not picked: seq log-uniform 256-8192 rounded to 8, micro batch 1-8, checkpointing 70 %, modules_to_save 50 %,
LoRA r from R, gradient accumulation 1/1/2/4/8; at most 16384 tokens a micro batch with checkpointing, and without
it what an H200 holds (CAP_NO_GC). A draw over the cap is drawn again.

    python bench/draw_round.py SEED llama-3.1-8b=8 llama-3.2-3b=4 llama-3.2-1b=4
"""

from __future__ import annotations

import math
import random
import sys

R = (8, 12, 16, 24, 32, 48, 64, 80, 96, 112, 128)
CAP_NO_GC = {"llama-3.1-8b": 2600, "llama-3.2-3b": 4000, "llama-3.2-1b": 6000}
CAP_GC = 16384


def draw(rng: random.Random, shape: str) -> tuple:
    while True:
        seq = max(256, min(8192, round(math.exp(rng.uniform(math.log(256), math.log(8192))) / 8) * 8))
        micro = rng.randint(1, 8)
        gc = rng.random() < 0.7
        mts = rng.random() < 0.5
        r = rng.choice(R)
        accum = rng.choice((1, 1, 2, 4, 8))
        if seq * micro <= (CAP_GC if gc else CAP_NO_GC.get(shape, 2600)):
            return (seq, micro, r, mts, gc, "holdout", accum)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit() or any("=" not in a for a in argv[1:]):
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    rng = random.Random(int(argv[0]))
    for spec in argv[1:]:
        shape, n = spec.split("=")
        print(f"    {shape!r}: {[draw(rng, shape) for _ in range(int(n))]},".replace("'", '"'))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
