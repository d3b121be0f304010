"""Training engines other than the bundled runner: axolotl, when the target environment has it."""

from __future__ import annotations

from pathlib import Path

from envdoctor.context import Context
from envdoctor.errors import UsageError
from envdoctor.system import System


def axolotl_executable(system: System, ctx: Context) -> str | None:
    """The target environment's own `axolotl` script first (beside its python), else the one on PATH."""
    beside = Path(ctx.python).parent / "axolotl"
    if system.exists(str(beside)):
        return str(beside)
    return system.which("axolotl")


def axolotl_argv(system: System, ctx: Context, verb: str, config: str) -> list[str]:
    exe = axolotl_executable(system, ctx)
    if exe is None:
        raise UsageError(f"--backend axolotl: no `axolotl` in {Path(ctx.python).parent} or on PATH; install it "
                         f"with `envdoctor install --recipe blackwell-cu128 …` or `{ctx.python} -m pip install "
                         "axolotl` (never --no-deps), or leave out --backend to use envdoctor's runner")
    if not Path(config).is_file():
        raise UsageError(f"{config}: no such config file")
    return [exe, verb, str(config)]
