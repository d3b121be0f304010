"""`envdoctor fix`: plan every scripted fix for the failing findings, show it, confirm, apply with
rollback, re-run the checks it targets."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

from envdoctor import engine, registry
from envdoctor.context import Context
from envdoctor.errors import UsageError
from envdoctor.model import Status, failing_statuses
from envdoctor.repair import refusals
from envdoctor.repair.apply import apply
from envdoctor.repair.plan import FIXES, Plan
from envdoctor.system import System


def collect(results, wanted: list[str]) -> dict[str, list]:
    """fix id -> the typed requests (repair/requests.py) of every finding that asks for it. Failures
    always; warnings only when the fix was named on the command line."""
    found: dict[str, list] = {}
    for r in results:
        for status, remedy in [(r.status, r.remedy)] + [(i.status, i.remedy) for i in r.items]:
            if remedy is None or remedy.request is None:
                continue
            named = remedy.fix_id in wanted
            if status == Status.FAIL or (status == Status.WARN and named):
                if not wanted or named:
                    bucket = found.setdefault(remedy.fix_id, [])
                    if remedy.request not in bucket:
                        bucket.append(remedy.request)
    return found


def show(plan: Plan, python: str, out) -> None:
    from envdoctor.assets import asset
    out.write(f"\n{plan.fix_id}: {plan.title}\n")
    env = {"PYTHON": python}
    if plan.pin_torch:
        env["PIP_CONSTRAINT"] = "<constraints file>"
        out.write(f"  constraints file: {plan.pin_torch}\n")
    for step in plan.steps:
        out.write(f"  - {step.description}\n")
        out.write(f"    $ {step.shell(str(asset('fixes', step.script)), env)}\n")
    for edit in plan.edits:
        out.write(f"  edit {edit.path}:\n")
        out.writelines(f"    {line}\n" for line in edit.diff.rstrip("\n").splitlines())
    for note in plan.notes:
        out.write(f"  note: {note}\n")
    for line in plan.afterwards:
        out.write(f"  afterwards: {line}\n")
    if plan.targets:
        out.write(f"  then re-checks: {', '.join(plan.targets)}\n")


def confirm(n: int, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise UsageError("refusing to change the environment without a terminal to confirm on: pass --yes "
                         "(or --dry-run to only see the plan)")
    answer = input(f"\nApply {n} fix{'es' if n > 1 else ''}? [y/N] ").strip().lower()
    return answer in ("y", "yes")


def log_dir(system: System) -> Path:
    base = system.env.get("XDG_CACHE_HOME") or f"{system.env.get('HOME', '/tmp')}/.cache"
    return Path(base) / "envdoctor" / "logs"


def run_fix(args, system: System, ctx: Context, out=sys.stdout) -> int:
    unknown = [f for f in args.ids if f not in FIXES]
    if unknown:
        raise UsageError(f"unknown fix {', '.join(unknown)}; fixes: {', '.join(FIXES)}")
    if not args.ids and not args.all:
        raise UsageError("name the fixes to apply, or pass --all (fixes: " + ", ".join(FIXES) + ")")
    checks = [c for c in registry.load().values() if not c.option]
    run = engine.run_checks(checks, registry.PROVIDERS, system, ctx)
    facts = {n: o.value for n, o in run.facts.items() if o.error is None}
    python_env, torch = facts.get("python"), facts.get("torch")
    if python_env is None:
        out.write("envdoctor fix: the target interpreter could not be probed; run `envdoctor check`.\n")
        return 1
    wanted = collect(run.results, list(args.ids))
    plans = [p for fid, requests in wanted.items()
             if (p := FIXES[fid].planner(requests, python_env, torch, system)) is not None]
    plans, refused = refusals.split(plans, python_env)
    if not plans and not refused and refusals.externally_managed(python_env) and any(
            r.status == Status.FAIL for r in run.results):
        # Its findings print the venv route (no fix id): say why nothing is planned here.
        out.write(f"envdoctor fix: refused: {refusals.refused_interpreter(python_env)}\n")
        return 1
    for plan, why in refused:
        out.write(f"{plan.fix_id}: refused: {why}\n")
    if not plans and refused:
        return 1
    if not plans:
        failing = [r.check_id for r in run.results if r.status == Status.FAIL]
        out.write("Nothing to fix: " + (f"no scripted fix for the failing checks ({', '.join(failing)}); "
                                        "`envdoctor check` shows what to do by hand.\n" if failing else
                                        "every check with a scripted fix passes.\n"))
        return 0
    out.write(f"envdoctor fix · {ctx.python}\n")
    for plan in plans:
        show(plan, ctx.python, out)
    if args.dry_run:
        out.write("\n--dry-run: nothing was changed.\n")
        return 0
    if not confirm(len(plans), args.yes):
        out.write("Nothing was changed.\n")
        return 1
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    outcomes = []
    for plan in plans:
        log = log_dir(system) / f"{stamp}-{plan.fix_id}.log"
        out.write(f"\n{plan.fix_id} (log: {log})\n")
        out.flush()
        outcomes.append(apply(system, ctx.python, plan, log, lambda m: (out.write(m + "\n"), out.flush()), stamp))
    for o in outcomes:
        if o.ok and o.plan.afterwards:
            out.write("\nNext:\n" + "".join(f"  {line}\n" for line in o.plan.afterwards))
            if o.plan.fix_id == "wsl.memory" and getattr(args, "restart_wsl", False):
                wsl_exe = "/mnt/c/Windows/System32/wsl.exe"
                out.write(f"  --restart-wsl: running {wsl_exe} --shutdown (this session ends with the VM)\n")
                out.flush()
                system.run([wsl_exe, "--shutdown"], timeout=60.0)
    targets = sorted({t for o in outcomes if o.ok for t in o.plan.targets})
    recheck = engine.run_checks([registry.load()[t] for t in targets], registry.PROVIDERS, system, ctx) \
        if targets else None
    status = {r.check_id: r for r in (recheck.results if recheck else [])}
    code = 0
    out.write("\nResult\n")
    for o in outcomes:
        if not o.ok:
            code = 1
            state = ("environment restored exactly as before" if o.restored else
                     "COULD NOT fully restore: " + "; ".join(o.restore_problems))
            out.write(f"  [✗] {o.plan.fix_id}: failed at '{o.failed_step}'; {state}\n")
            out.writelines(f"      | {line}\n" for line in o.tail)
            continue
        still = [t for t in o.plan.targets if status[t].status in failing_statuses()]
        if still:
            code = 1
            out.write(f"  [!] {o.plan.fix_id}: applied in {o.seconds:.0f} s, but still failing: "
                      + "; ".join(f"{t}: {status[t].message}" for t in still) + "\n")
        else:
            out.write(f"  [✓] {o.plan.fix_id}: fixed in {o.seconds:.0f} s ({', '.join(o.plan.targets)} pass)\n")
    return 1 if refused else code


def main(args) -> int:
    from envdoctor.commands.interpreter import resolve
    system, ctx = resolve(args)
    return run_fix(args, system, ctx)
