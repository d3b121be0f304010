#!/usr/bin/env python3
"""`envdoctor check --deep` against a bare CUDA start, and against torch's collect_env.

    python bench/bench_deep.py --python /path/to/python [--runs 5]

Times a bare `python -c "import torch; torch.zeros(1).cuda()"` and the whole deep check, alternating,
and prints both medians and the ratio. Then runs `python -m torch.utils.collect_env` once and checks
that envdoctor agrees with it on driver version, CUDA version, GPU name and torch version.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time


def timed(argv):
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    return time.perf_counter() - start, proc


def collect_env_facts(text: str) -> dict:
    def field(label):
        m = re.search(rf"^{re.escape(label)}:\s*(.+)$", text, re.M)
        return m.group(1).strip() if m else None
    gpu = field("GPU models and configuration") or ""
    return {"driver": field("Nvidia driver version"), "cuda": field("CUDA used to build PyTorch"),
            "gpu": re.sub(r"^GPU \d+:\s*", "", gpu.splitlines()[0]) if gpu else None,
            "torch": field("PyTorch version")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", required=True)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    bare = [args.python, "-c", "import torch; torch.zeros(1).cuda()"]
    # The floor the stack itself sets: deep mode must import bitsandbytes (which imports torch._dynamo).
    floor = [args.python, "-c", "import torch, bitsandbytes; torch.zeros(1).cuda()"]
    deep = [sys.executable, "-m", "envdoctor", "check", "--deep", "--json", "--python", args.python]
    for argv in (bare, deep):
        subprocess.run(argv, capture_output=True)  # warm caches for both
    times = {"bare": [], "floor": [], "deep": []}
    last = None
    for _ in range(args.runs):
        t, _proc = timed(bare)
        times["bare"].append(t)
        t, floor_proc = timed(floor)
        times["floor"].append(t if floor_proc.returncode == 0 else float("nan"))
        t, last = timed(deep)
        times["deep"].append(t)
    report = json.loads(last.stdout)
    b, d = statistics.median(times["bare"]), statistics.median(times["deep"])
    print(f"bare import torch + CUDA init : median {b:.3f} s  (runs: {', '.join(f'{x:.2f}' for x in times['bare'])})")
    print(f"envdoctor check --deep        : median {d:.3f} s  (runs: {', '.join(f'{x:.2f}' for x in times['deep'])})")
    f = statistics.median(times["floor"])
    print(f"import torch, bitsandbytes    : median {f:.3f} s  (runs: {', '.join(f'{x:.2f}' for x in times['floor'])})")
    print(f"ratio deep / bare             : {d / b:.2f}x  ({report['summary']})")
    print(f"ratio deep / bitsandbytes floor: {d / f:.2f}x")
    facts = report["facts"]
    ours = {"driver": facts["gpu"]["driver"], "cuda": facts["torch"]["cuda"],
            "gpu": facts["gpu"]["gpus"][0]["name"] if facts["gpu"]["gpus"] else None,
            "torch": facts["torch"]["version"]}
    theirs = collect_env_facts(subprocess.run([args.python, "-m", "torch.utils.collect_env"],
                                              capture_output=True, text=True).stdout)
    agree = True
    for key in ours:
        same = ours[key] == theirs[key]
        agree &= same
        print(f"  {key:<7} envdoctor={ours[key]!r:<24} collect_env={theirs[key]!r:<24} {'agree' if same else 'DIFFER'}")
    print("agreement: all four agree" if agree else "agreement: DIFFERENCES above")
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
