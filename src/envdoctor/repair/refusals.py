"""Plans `envdoctor fix` must not apply, and why: pip steps into an externally managed interpreter
(PEP 668: the distribution's package manager owns it), and plans that have nothing left to do because
each of their edits was refused (a file that is not writable)."""

from __future__ import annotations

from envdoctor.facts.python_env import PythonEnv
from envdoctor.repair.plan import Plan
from envdoctor.repair.requests import externally_managed
from envdoctor.venvhint import VENV, venv_command, venv_text

__all__ = ["externally_managed", "split", "venv_advice", "refused_interpreter"]


def venv_advice(python: PythonEnv) -> str:
    return (f"create a virtual environment ({venv_command(python)}) and run `envdoctor fix --python "
            f"{VENV}`. " + venv_text(python))


def refused_interpreter(python: PythonEnv) -> str:
    return (f"{python.executable} is externally managed (PEP 668: its EXTERNALLY-MANAGED file): pip must not "
            "install into it; " + venv_advice(python))


def split(plans: list[Plan], python: PythonEnv) -> tuple[list[Plan], list[tuple[Plan, str]]]:
    runnable, refused = [], []
    for plan in plans:
        if plan.steps and externally_managed(python):
            refused.append((plan, refused_interpreter(python)))
        elif not plan.steps and not plan.edits:
            refused.append((plan, "; ".join(plan.notes) or "nothing can be changed automatically"))
        else:
            runnable.append(plan)
    return runnable, refused
