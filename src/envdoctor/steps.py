"""Changing an environment step by step, the one way both `envdoctor fix` (repair/apply.py) and `envdoctor
install` do it: each step a command with its own environment and timeout, announced, its whole output
logged (secrets redacted by the log), stopping at the first failure. And `freeze`, the one reader of what
pip says is installed (to pin torch, and to restore an environment exactly)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from packaging.utils import canonicalize_name

from envdoctor.system import CommandResult, System


@dataclass
class Step:
    title: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    timeout: float = 3600.0


@dataclass
class Failure:
    number: int                 # 1-based, as announced
    step: Step
    result: CommandResult

    @property
    def tail(self) -> list[str]:
        """The last lines the command printed: what a user needs to see of a failure."""
        return (self.result.stdout + self.result.stderr).strip().splitlines()[-15:]


def log_result(log, res: CommandResult) -> None:
    log.write(f"$ {' '.join(res.argv)}\n{res.stdout}{res.stderr}\n[exit {res.returncode}]\n")
    log.flush()


def run_steps(system: System, steps: list[Step], log, announce: Callable[[int, int, Step], None],
              env: Mapping[str, str] | None = None,
              after: Callable[[int, Step], None] | None = None) -> Failure | None:
    """Run the steps in order; None when all succeeded, else the first failure (later steps do not run).
    `env` is the base environment (default: the machine's); a step's own variables go over it."""
    base = dict(system.env if env is None else env)
    for number, step in enumerate(steps, 1):
        announce(number, len(steps), step)
        res = system.run(step.argv, timeout=step.timeout, env={**base, **step.env})
        log_result(log, res)
        if not res.ok:
            return Failure(number, step, res)
        if after is not None:
            after(number, step)
    return None


def freeze(system: System, python: str) -> dict[str, str]:
    """Canonical project name -> requirement line, exactly as `pip freeze --all` prints it."""
    res = system.run([python, "-m", "pip", "freeze", "--all", "--disable-pip-version-check"], timeout=120.0)
    if not res.ok:
        raise RuntimeError(f"pip freeze failed: {res.describe()}: {res.stderr.strip()[-300:]}")
    out = {}
    for line in res.stdout.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out[canonicalize_name(line.split("==")[0].split(" @ ")[0].strip())] = line
    return out
