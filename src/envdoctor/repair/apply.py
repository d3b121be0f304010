"""Applying plans: record the environment, run the steps with a log, restore on failure."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from envdoctor.assets import asset
from envdoctor.redact import RedactedLog
from envdoctor.repair.plan import Plan
from envdoctor.steps import Step, freeze, log_result, run_steps
from envdoctor.system import System


@dataclass
class Outcome:
    plan: Plan
    ok: bool
    seconds: float = 0.0
    failed_step: str | None = None
    tail: list[str] = field(default_factory=list)
    restored: bool | None = None      # None: nothing needed restoring
    restore_problems: list[str] = field(default_factory=list)


def restore(system: System, python: str, before: dict[str, str], log) -> list[str]:
    """Put the environment back to `before`; returns what could not be restored (empty: exact)."""
    now = freeze(system, python)
    added = sorted(set(now) - set(before))
    changed = sorted(n for n in before if now.get(n) != before[n])
    if added:
        res = system.run([python, "-m", "pip", "uninstall", "-y", *added], timeout=600.0)
        log(res)
    if changed:
        res = system.run([python, "-m", "pip", "install", "--no-deps", "--force-reinstall",
                          "--disable-pip-version-check", *[before[n] for n in changed]], timeout=1800.0)
        log(res)
    after = freeze(system, python)
    return [f"{n}: {after.get(n, 'absent')} (was {before.get(n, 'absent')})"
            for n in sorted(set(after) | set(before)) if after.get(n) != before.get(n)]


def write_edits(system: System, plan: Plan, stamp: str, progress) -> list[str]:
    """Back up each file byte for byte, then write the new content atomically. Returns the backups."""
    backups = []
    for edit in plan.edits:
        if edit.old is not None:
            backup = f"{edit.path}.envdoctor-{stamp}.bak"
            system.write_bytes(backup, edit.old)
            if system.read_bytes(backup) != edit.old:
                raise RuntimeError(f"backup {backup} does not match {edit.path}; nothing was changed")
            backups.append(backup)
            progress(f"  backed up {edit.path} to {backup}")
        system.write_bytes(edit.path, edit.new)
        progress(f"  wrote {edit.path}")
    return backups


def apply(system: System, python: str, plan: Plan, log_path: Path, progress, stamp: str) -> Outcome:
    start = time.monotonic()
    if plan.edits and not plan.steps:
        write_edits(system, plan, stamp, progress)
        return Outcome(plan, True, time.monotonic() - start)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fh = RedactedLog(log_path)

    def log(res) -> None:
        log_result(fh, res)

    try:
        before = freeze(system, python)
        fh.write(f"# envdoctor fix {plan.fix_id}\n# before:\n" + "".join(f"#   {v}\n" for v in before.values()))
        env = dict(system.env, PYTHON=python)
        constraint = None
        if plan.pin_torch:
            constraint = log_path.with_suffix(".constraints.txt")
            constraint.write_text(plan.pin_torch + "\n")
            env["PIP_CONSTRAINT"] = str(constraint)
        steps = [Step(s.description, ["bash", str(asset("fixes", s.script)), *s.args], s.env, s.timeout)
                 for s in plan.steps]
        failed = run_steps(system, steps, fh, lambda i, n, step: progress(f"  [{i}/{n}] {step.title} …"), env)
        if failed is not None:
            out = Outcome(plan, False, failed_step=failed.step.title,
                          tail=failed.tail or [failed.result.describe()])
            progress("  failed; restoring the environment as it was …")
            out.restore_problems = restore(system, python, before, log)
            out.restored = not out.restore_problems
            out.seconds = time.monotonic() - start
            return out
        return Outcome(plan, True, time.monotonic() - start)
    finally:
        fh.close()
