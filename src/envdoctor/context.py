"""What a doctor run is about: the target interpreter and the options that shape the probes."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing before the probe starts
if TYPE_CHECKING:  # annotations only
    from typing import Mapping


@dataclass(frozen=True)
class Context:
    python: str                 # the target interpreter
    python_reason: str          # why this one ("--python", "active virtualenv …", …)
    probe_timeout: float = 30.0
    smoke_timeout: float = 120.0   # each deep-mode smoke test (torch import + CUDA init can be slow)
    recipe: str | None = None      # --recipe: the stack to compare with
    train_config: str | None = None  # --config: a training config to validate and cost
    model_dir: str | None = None     # --model: a model folder to validate (a merge's output)
    train_engine: str = "runner"        # whose memory to estimate: "runner", or "peft" (axolotl, plain loops)
    train_nproc: int | None = None      # --nproc: processes (one GPU each) the run will start
    train_overrides: tuple = ()         # (key, value) pairs the command line sets over the config's keys
    train_download: bool = False        # train --download: the run may fetch the base model from the hub


def _venv_python(prefix: str) -> str | None:
    for rel in ("bin/python", "bin/python3", "Scripts/python.exe"):
        candidate = Path(prefix) / rel
        if candidate.exists():
            return str(candidate)
    return None


def choose_python(explicit: str | None, env: Mapping[str, str], which=None) -> tuple[str, str]:
    """The interpreter to diagnose and why: --python, the active venv/conda env, else this one.

    When envdoctor itself lives in a pipx venv and nothing is active, its own interpreter is the wrong
    patient: take `python3` from PATH instead.
    """
    if explicit:
        path = Path(explicit)
        if path.is_dir():  # a venv folder was given
            found = _venv_python(str(path))
            if found:
                return found, f"--python {explicit}"
        return str(path), f"--python {explicit}"
    for var, what in (("VIRTUAL_ENV", "active virtualenv"), ("CONDA_PREFIX", "active conda env")):
        prefix = env.get(var)
        if prefix:
            found = _venv_python(prefix)
            if found:
                return found, f"{what} {prefix}"
    if "pipx" in Path(sys.prefix).parts or os.path.exists(os.path.join(sys.prefix, "pipx_metadata.json")):
        found = (which or _which)("python3")
        if found:
            return found, "python3 on PATH (envdoctor runs from pipx)"
    return sys.executable, "the interpreter running envdoctor"


def _which(name: str) -> str | None:
    import shutil
    return shutil.which(name)
