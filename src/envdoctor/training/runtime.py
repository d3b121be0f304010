"""Before a script runs in the target environment: are the packages it imports there? Asked with
importlib.util.find_spec in a subprocess of the target interpreter (nothing is imported)."""

from __future__ import annotations

import json

from envdoctor import target
from envdoctor.context import Context
from envdoctor.errors import UsageError
from envdoctor.system import System


def require(system: System, ctx: Context, modules: list[str], what: str) -> None:
    res = system.run(target.argv(ctx.python, "findspec", *modules), timeout=ctx.probe_timeout)
    try:
        missing = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise UsageError(f"cannot run {ctx.python} ({res.describe()})")
    if missing:
        rest = [m for m in missing if m != "torch"]  # these modules are named as their distributions
        how = ["torch: the build for your GPU, `envdoctor install --venv DIR` (or `envdoctor check` names the "
               "exact pip command)"] if "torch" in missing else []
        how += [f"{ctx.python} -m pip install {' '.join(rest)}"] if rest else []
        raise UsageError(f"{what} needs {', '.join(missing)} in the target environment ({ctx.python}); "
                         + "; ".join(how))
