"""Deep-mode facts: smoke tests in timeout-bounded subprocesses of the target interpreter."""

from __future__ import annotations

import json
import signal
from dataclasses import asdict, dataclass, field

from envdoctor import target
from envdoctor.context import Context
from envdoctor.facts.gpu import SMOKE_MARK, GpuFacts
from envdoctor.system import System

STAGES = ("torch", "bitsandbytes", "flash_attn", "torchao")


@dataclass
class SmokeResult:
    stage: str
    status: str                   # ok / warn / fail / skip
    message: str
    details: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def run_smoke(system: System, ctx: Context, stage: str) -> SmokeResult:
    argv = target.argv(ctx.python, "smoke", SMOKE_MARK, stage)
    res = system.run(argv, timeout=ctx.smoke_timeout)
    tail = [ln for ln in res.stderr.strip().splitlines() if ln.strip()][-6:]
    if res.timed_out:
        return SmokeResult(stage, "fail", f"hung: no answer within {ctx.smoke_timeout:g} s", tail,
                           seconds=res.duration_s)
    if res.error:
        return SmokeResult(stage, "fail", f"could not start {ctx.python}: {res.error}", seconds=res.duration_s)
    if res.returncode is not None and res.returncode < 0:
        return SmokeResult(stage, "fail", f"crashed with {_signal_name(res.returncode)}", tail,
                           seconds=res.duration_s)
    line = (res.stdout.strip().splitlines() or [""])[-1]
    try:
        out = json.loads(line)
        return SmokeResult(stage, out["status"], out["message"], out.get("details", []), out.get("data", {}),
                           out.get("seconds", res.duration_s))
    except (ValueError, KeyError, TypeError):
        return SmokeResult(stage, "fail", f"exited with code {res.returncode} without a result", tail,
                           seconds=res.duration_s)


def provider_for(stage: str):
    def probe(system: System, ctx: Context, gpu: GpuFacts) -> SmokeResult:
        if not gpu.present:  # nothing to test, and no reason to spend seconds importing torch
            return SmokeResult(stage, "skip", "no NVIDIA GPU found")
        return run_smoke(system, ctx, stage)
    probe.__name__ = f"probe_smoke_{stage}"
    return probe
