"""The venv a remedy tells the user to create: with the interpreter being diagnosed, by its own path
and version (never a hard-coded python3.12 that may not exist on this machine)."""

from __future__ import annotations

import shlex

from envdoctor.facts.python_env import PythonEnv

VENV = "~/.venvs/finetune"


def venv_command(python: PythonEnv) -> str:
    return f"{shlex.quote(python.executable)} -m venv {VENV} && source {VENV}/bin/activate"


def venv_text(python: PythonEnv) -> str:
    major, minor = python.version[:2]
    return (f"Create a virtual environment with this Python {major}.{minor} (on Debian/Ubuntu the venv module "
            f"needs `apt install python{major}.{minor}-venv`), or let envdoctor build one with the stack: "
            f"`envdoctor install --venv {VENV}`.")
