#!/usr/bin/env python3
"""Time the binary-compatibility scan (every shared object in an environment) cold and cached.

    python bench/bench_scan.py --python /path/to/python [--runs 5]

"Cold" clears envdoctor's own cache first (the OS page cache is not touched: drop it yourself with
`sync; echo 3 > /proc/sys/vm/drop_caches` as root for a truly cold disk). Both are medians over runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

from envdoctor.context import Context
from envdoctor.facts.binaries import probe_binaries
from envdoctor.facts.python_env import probe_python
from envdoctor.facts.torch_build import probe_torch
from envdoctor.system import System


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", required=True)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    cache_home = tempfile.mkdtemp(prefix="envdoctor-bench-")
    system = System(env={**os.environ, "XDG_CACHE_HOME": cache_home})
    ctx = Context(python=args.python, python_reason="--python")
    python = probe_python(system, ctx)
    cold, warm, facts = [], [], None
    for _ in range(args.runs):
        shutil.rmtree(f"{cache_home}/envdoctor", ignore_errors=True)
        start = time.perf_counter()
        probe_torch(system, ctx, python)
        facts = probe_binaries(system, ctx, python, probe_torch(system, ctx, python))
        cold.append(time.perf_counter() - start)
        start = time.perf_counter()
        facts = probe_binaries(system, ctx, python, probe_torch(system, ctx, python))
        warm.append(time.perf_counter() - start)
    shutil.rmtree(cache_home, ignore_errors=True)
    related = [e for e in facts.extensions if not e.unused]
    print(f"interpreter: {args.python}: {len(python.distributions)} distributions, {facts.files_scanned} shared "
          f"objects, {len(facts.extensions)} link torch/CUDA ({len(related)} loaded in this environment)")
    print(f"scan without envdoctor's cache: median {statistics.median(cold) * 1000:.0f} ms "
          f"(torch build facts + every extension; runs: {', '.join(f'{x * 1000:.0f}' for x in cold)})")
    print(f"scan with the cache           : median {statistics.median(warm) * 1000:.0f} ms "
          f"(runs: {', '.join(f'{x * 1000:.0f}' for x in warm)})")
    for e in facts.extensions:
        state = "unused" if e.unused else ("WILL FAIL" if e.will_fail else "ok")
        print(f"  {state:<9} {e.dist} {e.version}: {e.path.split('/site-packages/')[-1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
