"""Deep mode: import each installed package of the training stack for real, each in its own
timeout-bounded subprocess of the target interpreter, all at once.

Metadata cannot see every incompatibility: peft declares a bare `Requires-Dist: transformers`, yet a
peft release imports names that only newer transformers releases have. Only an import finds that."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from envdoctor import target
from envdoctor.context import Context
from envdoctor.facts.gpu import SMOKE_MARK
from envdoctor.facts.python_env import PythonEnv
from envdoctor.system import System, signal_name

# distribution name -> the module a training script imports; report order.
STACK = {"transformers": "transformers", "peft": "peft", "trl": "trl", "accelerate": "accelerate",
         "datasets": "datasets", "bitsandbytes": "bitsandbytes", "torchao": "torchao", "axolotl": "axolotl"}


@dataclass
class StackImport:
    dist: str                     # distribution name as in STACK
    version: str | None
    ok: bool
    error: str | None = None      # "ImportError: cannot import name ..." exactly as raised
    raised_in: str | None = None  # the module whose code raised ("peft.peft_model")
    line: int | None = None
    missing: str | None = None    # the module an ImportError names ("transformers")
    seconds: float = 0.0


@dataclass
class StackImports:
    results: list[StackImport] = field(default_factory=list)
    timeout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def import_one(system: System, ctx: Context, dist: str, module: str, version: str | None,
               timeout: float) -> StackImport:
    argv = target.argv(ctx.python, "stackimport", SMOKE_MARK, "stack", module)
    res = system.run(argv, timeout=timeout)
    if res.timed_out:
        return StackImport(dist, version, False, f"hung: `import {module}` did not finish within {timeout:g} s",
                           seconds=res.duration_s)
    if res.error:
        return StackImport(dist, version, False, f"could not start {ctx.python}: {res.error}")
    if res.returncode is not None and res.returncode < 0:
        tail = [ln for ln in res.stderr.strip().splitlines() if ln.strip()][-1:]
        return StackImport(dist, version, False, f"`import {module}` crashed the interpreter (signal "
                           f"{-res.returncode}{signal_name(-res.returncode)})" + (f": {tail[0]}" if tail else ""),
                           seconds=res.duration_s)
    for line in reversed(res.stdout.splitlines()):
        try:
            row = json.loads(line)
            return StackImport(dist, version, bool(row["ok"]), row.get("error"), row.get("raised_in"),
                               row.get("line"), row.get("missing"), float(row.get("seconds") or res.duration_s))
        except (ValueError, KeyError, TypeError):
            continue
    tail = [ln for ln in res.stderr.strip().splitlines() if ln.strip()][-1:]
    return StackImport(dist, version, False, f"`import {module}` exited with code {res.returncode} without a "
                       "result" + (f": {tail[0]}" if tail else ""), seconds=res.duration_s)


def probe_stack_imports(system: System, ctx: Context, python: PythonEnv) -> StackImports:
    todo = [(d, m, python.get(d).version) for d, m in STACK.items() if python.get(d) is not None]
    if not todo:
        return StackImports([], ctx.smoke_timeout)
    # All at once, so the whole probe is bounded by one smoke timeout (the provider's budget); on a
    # 2-core box the imports share the cores, which the default 120 s leaves ample room for.
    with ThreadPoolExecutor(max_workers=len(todo), thread_name_prefix="envdoctor-stack") as pool:
        futs = [pool.submit(import_one, system, ctx, d, m, v, ctx.smoke_timeout) for d, m, v in todo]
        return StackImports([f.result() for f in futs], ctx.smoke_timeout)

