#!/usr/bin/env python3
"""Merge benchmark: train/merge.py (tensor by tensor) against the plain PEFT path (load the bf16 base,
PeftModel.from_pretrained, merge_and_unload, save_pretrained), each in its own process, measured in the
same call: wall time and peak host memory (the child's max RSS from wait4).

    python bench/bench_merge.py RUN_DIR [--python PY]      (RUN_DIR: an `envdoctor train` output)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLAIN = """
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
base, adapter, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
model.save_pretrained(out)
AutoTokenizer.from_pretrained(adapter).save_pretrained(out)
"""


def measure(argv: list[str]) -> dict:
    start = time.time()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.time() - start
    code = os.waitstatus_to_exitcode(status)
    if code:
        print(output[-3000:], file=sys.stderr)
    return {"exit": code, "seconds": round(took, 1), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    run = Path(args.run)
    base, adapter = run / "base", run / "adapter"
    size = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    rows = {}
    for name, argv in (
            ("envdoctor merge.py", [args.python, str(ROOT / "train" / "merge.py"), "--base", str(base), "--adapter",
                                   str(adapter), "--out", str(run / "bench-merged"), "--device", args.device]),
            ("plain PEFT merge_and_unload", [args.python, "-c", PLAIN, str(base), str(adapter),
                                             str(run / "bench-peft")])):
        rows[name] = measure(argv)
        print(json.dumps({name: rows[name]}), flush=True)
        shutil.rmtree(run / ("bench-merged" if "envdoctor" in name else "bench-peft"), ignore_errors=True)
    ours, plain = rows["envdoctor merge.py"], rows["plain PEFT merge_and_unload"]
    print(json.dumps({"model_gib": round(size / 2**30, 2), "time_ratio_plain_over_ours":
                      round(plain["seconds"] / max(ours["seconds"], 1e-9), 2),
                      "rss_ratio_ours_over_plain": round(ours["peak_rss_gib"] / max(plain["peak_rss_gib"], 1e-9), 3),
                      "rss_ours_over_model": round(ours["peak_rss_gib"] / (size / 2**30), 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
