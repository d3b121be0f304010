"""Which machine and which interpreter a verb works on: --python, the active venv, or (merge, eval) the
interpreter that trained the run."""

from __future__ import annotations

import json
import os

from envdoctor.errors import UsageError


def resolve(args):
    """The machine and the interpreter to diagnose (--python, the active venv, …): (System, Context)."""
    from envdoctor.context import Context, choose_python
    from envdoctor.system import System
    system = System()
    python, reason = choose_python(args.python, system.env)
    if getattr(args, "python_from_run", False):
        reason = "the interpreter that trained the run (run_summary.json)"
    if args.python and not os.path.exists(python):
        raise UsageError(f"--python {args.python}: no such interpreter ({python})")
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    return system, Context(python=python, python_reason=reason, probe_timeout=args.timeout)


def run_python(args) -> None:
    """merge and eval run with the interpreter that trained the run (run_summary.json records it), unless
    --python says otherwise: with envdoctor in its own venv, that is not the one training used."""
    if args.python or getattr(args, "backend", "runner") == "axolotl":
        return
    try:
        recorded = json.loads(open(os.path.join(args.run, "run_summary.json"), encoding="utf-8").read()).get("python")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(recorded, str) and os.path.exists(recorded):
        args.python, args.python_from_run = recorded, True
