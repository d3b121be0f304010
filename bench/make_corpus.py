#!/usr/bin/env python3
"""A synthetic corpus for the H200 runs (random words; only its token counts matter):
4 files × 120 paragraphs × 120 words in /tmp/envdoctor-bench-corpus (bench/configs/llama8b-random.yaml)."""

import os
import random

OUT = "/tmp/envdoctor-bench-corpus"
words = ["".join(random.Random(i).choice("abcdefghijklmnopqrstuvwxyz") for _ in range(random.Random(i).randint(2, 9)))
         for i in range(3000)]
os.makedirs(OUT, exist_ok=True)
rng = random.Random(0)
for f in range(4):
    with open(f"{OUT}/part{f}.txt", "w") as fh:
        fh.write("\n\n".join(" ".join(rng.choice(words) for _ in range(120)) + "." for _ in range(120)))
