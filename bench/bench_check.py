#!/usr/bin/env python3
"""Time `envdoctor check` against `python -m torch.utils.collect_env` on the same interpreter.

    python bench/bench_check.py --python /path/to/venv/bin/python [--runs 11]

The interpreter must have torch. Both tools run as fresh processes, alternating (doctor, collect_env,
doctor, …) so machine noise hits both alike; prints each median and minimum, the ratio of the medians, the
first run with an empty scan cache (cold) apart from the warm runs, and where the doctor's time goes:
interpreter start, its own imports, each fact provider (from `check -v`).

The doctor runs with its scan cache in a fresh temporary XDG_CACHE_HOME (the user's cache is neither read
nor changed) and with bytecode writing on (PYTHONDONTWRITEBYTECODE removed for it), as an installed package
runs: without .pyc files every run recompiles ~100 modules (~60 ms), which pip does once at install.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


CPU: dict[str, list[float]] = {}  # user + system CPU seconds of each run: steadier than wall time on a busy box


def timed(argv: list[str], env: dict | None = None, label: str | None = None) -> tuple[float, subprocess.CompletedProcess]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    took = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if label:
        CPU.setdefault(label, []).append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return took, proc


def median_of(argv: list[str], env: dict, runs: int) -> float:
    return statistics.median(timed(argv, env)[0] for _ in range(runs))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", required=True, help="interpreter with torch installed")
    ap.add_argument("--runs", type=int, default=11)
    args = ap.parse_args()

    cache_home = tempfile.mkdtemp(prefix="envdoctor-bench-cache-")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["XDG_CACHE_HOME"] = cache_home
    try:
        return run(args, env)
    finally:
        shutil.rmtree(cache_home, ignore_errors=True)


def run(args, env: dict) -> int:
    doctor = [sys.executable, "-m", "envdoctor", "check", "--json", "--python", args.python]
    collect = [args.python, "-m", "torch.utils.collect_env"]
    subprocess.run([sys.executable, "-c", "import envdoctor.cli"], env=env, capture_output=True)  # .pyc files
    cold, cold_proc = timed(doctor, env)  # empty scan cache: every shared object read
    if cold_proc.returncode not in (0, 1):
        print(f"envdoctor check failed:\n{cold_proc.stderr[-2000:]}", file=sys.stderr)
        return 1
    subprocess.run(collect, capture_output=True)  # page cache warm for collect_env too
    times: dict[str, list[float]] = {"envdoctor check": [], "collect_env": []}
    last: dict[str, subprocess.CompletedProcess] = {}
    for _ in range(args.runs):
        for name, argv, e in (("envdoctor check", doctor, env), ("collect_env", collect, None)):
            t, proc = timed(argv, e, name)
            times[name].append(t)
            last[name] = proc
    if last["collect_env"].returncode != 0:
        print(f"collect_env failed:\n{last['collect_env'].stderr[-2000:]}", file=sys.stderr)
        return 1
    report = json.loads(last["envdoctor check"].stdout)
    dists = len(report["facts"]["python"]["distributions"])
    items = sum(len(r["items"]) for r in report["results"])
    binaries = report["facts"].get("binaries") or {}
    ours, theirs = statistics.median(times["envdoctor check"]), statistics.median(times["collect_env"])
    print(f"interpreter: {args.python} ({dists} distributions); {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"envdoctor check --json : median {ours:.3f} s over {args.runs} runs "
          f"(min {min(times['envdoctor check']):.3f}); {len(report['results'])} checks, {items} findings, "
          f"every distribution's requirements evaluated")
    lines = len(last["collect_env"].stdout.strip().splitlines())
    print(f"torch collect_env      : median {theirs:.3f} s over {args.runs} runs "
          f"(min {min(times['collect_env']):.3f}); {lines} lines of facts, no verdicts")
    print(f"ratio                  : envdoctor is {theirs / ours:.1f}x faster (medians, alternating runs)")
    cpu_ours, cpu_theirs = statistics.median(CPU["envdoctor check"]), statistics.median(CPU["collect_env"])
    print(f"CPU time (user+sys)    : envdoctor {cpu_ours:.3f} s, collect_env {cpu_theirs:.3f} s "
          f"({cpu_theirs / cpu_ours:.1f}x; medians, children included)")
    print(f"cold scan cache        : {cold:.3f} s (first run, empty cache: "
          f"{binaries.get('files_scanned', '?')} shared objects read, reported apart from the medians)")
    breakdown(args, env, doctor)
    return 0


def breakdown(args, env: dict, doctor: list[str]) -> None:
    """Where the doctor's time goes: medians of a few runs of each part alone, then the facts' own
    timings from `check -v` (they overlap: the providers run concurrently)."""
    n = max(3, args.runs // 2)
    start = median_of([sys.executable, "-c", "pass"], env, n)
    imports = median_of([sys.executable, "-c", "import envdoctor.cli, envdoctor.commands.check, envdoctor.engine, "
                         "envdoctor.registry as r; r.load()"], env, n) - start
    probe = median_of([args.python, "-c", open(_probe_path(), encoding="utf-8").read()], env, n)
    print(f"breakdown              : interpreter start {start * 1000:.0f} ms; doctor imports {imports * 1000:.0f} ms; "
          f"target probe alone {probe * 1000:.0f} ms (started before the imports: they overlap)")
    verbose = subprocess.run([a for a in doctor if a != "--json"] + ["-v"], capture_output=True, text=True, env=env)
    facts = re.findall(r"facts '(\w+)': (\d+) ms", verbose.stdout)
    slow = [(m[1], int(m[2])) for m in re.finditer(r"\] (.+?)  \((\d+) ms\)$", verbose.stdout, re.M) if int(m[2]) >= 1]
    total = re.search(r"\((\d+\.\d+) s\)\s*$", verbose.stdout.strip())
    print("  facts (concurrent)   : " + ", ".join(f"{n} {ms} ms" for n, ms in sorted(facts, key=lambda f: -int(f[1]))))
    print("  checks ≥ 1 ms        : " + (", ".join(f"{n.split(' — ')[0]} {ms} ms" for n, ms in slow) or "none"))
    if total:
        print(f"  facts + checks       : {float(total[1]) * 1000:.0f} ms (the engine's own clock; the rest of a run "
              "is start, imports, report)")


def _probe_path() -> str:
    import envdoctor.target
    return os.path.join(os.path.dirname(envdoctor.target.__file__), "probe.py")


if __name__ == "__main__":
    raise SystemExit(main())
