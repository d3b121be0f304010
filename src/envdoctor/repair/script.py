"""One call of a script from fixes/: the unit both a plan's step and a finding's printed command are made of."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field


@dataclass
class Step:
    description: str
    script: str                      # a file in fixes/
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    timeout: float = 1800.0

    def shell(self, script_path: str, env: dict[str, str]) -> str:
        """The exact call, as a shell line a user could run."""
        assigned = " ".join(f"{k}={shlex.quote(v)}" for k, v in {**env, **self.env}.items())
        return " ".join(filter(None, (assigned, "bash", shlex.quote(script_path),
                                      " ".join(shlex.quote(a) for a in self.args))))


def step_command(step: Step, python: str) -> str:
    """A step as the copyable shell line a finding prints: the same script, the same variables."""
    from envdoctor.assets import asset
    return step.shell(str(asset("fixes", step.script)), {"PYTHON": python})
