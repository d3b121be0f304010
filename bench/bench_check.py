#!/usr/bin/env python3
"""Time `envdoctor check` against `python -m torch.utils.collect_env` on the same interpreter.

    python bench/bench_check.py --python /path/to/venv/bin/python [--runs 7]

The interpreter must have torch. Both tools run as fresh processes, alternating, so machine noise
hits both alike. Prints each median, the ratio, and how much each one reports.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def timed(argv: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    return time.perf_counter() - start, proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", required=True, help="interpreter with torch installed")
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()

    doctor = [sys.executable, "-m", "envdoctor", "check", "--json", "--python", args.python]
    collect = [args.python, "-m", "torch.utils.collect_env"]
    for argv in (doctor, collect):  # warm the page cache for both before timing
        subprocess.run(argv, capture_output=True)
    times: dict[str, list[float]] = {"envdoctor check": [], "collect_env": []}
    last: dict[str, subprocess.CompletedProcess] = {}
    for _ in range(args.runs):
        for name, argv in (("envdoctor check", doctor), ("collect_env", collect)):
            t, proc = timed(argv)
            times[name].append(t)
            last[name] = proc
    if last["collect_env"].returncode != 0:
        print(f"collect_env failed:\n{last['collect_env'].stderr[-2000:]}", file=sys.stderr)
        return 1
    report = json.loads(last["envdoctor check"].stdout)
    dists = len(report["facts"]["python"]["distributions"])
    items = sum(len(r["items"]) for r in report["results"])
    ours, theirs = statistics.median(times["envdoctor check"]), statistics.median(times["collect_env"])
    print(f"interpreter: {args.python} ({dists} distributions)")
    print(f"envdoctor check --json : median {ours:.3f} s over {args.runs} runs "
          f"(min {min(times['envdoctor check']):.3f}); {len(report['results'])} checks, {items} findings, "
          f"every distribution's requirements evaluated")
    lines = len(last["collect_env"].stdout.strip().splitlines())
    print(f"torch collect_env      : median {theirs:.3f} s over {args.runs} runs "
          f"(min {min(times['collect_env']):.3f}); {lines} lines of facts, no verdicts")
    print(f"ratio                  : envdoctor is {theirs / ours:.1f}x faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
