"""Python interpreter checks: implementation, version, environment kind."""

from __future__ import annotations

from envdoctor.facts.python_env import PythonEnv
from envdoctor.model import Remedy, Result, fail, ok, warn
from envdoctor.registry import check
from envdoctor.venvhint import venv_command, venv_text

# PyTorch 2.9+ needs Python >= 3.10; prebuilt flash-attn / bitsandbytes wheels lag new Pythons.
OLDEST_SUPPORTED = (3, 9)
OLDEST_CURRENT = (3, 10)
NEWEST_WITH_WHEELS = (3, 13)
VENV_HINT = "python3.12 -m venv ~/.venvs/finetune && source ~/.venvs/finetune/bin/activate"


@check("python.interpreter", "Python interpreter", "Python",
       "the target interpreter runs, is CPython and 64-bit", needs=("python",))
def interpreter(python: PythonEnv) -> Result:
    where = f"{python.executable} ({python.reason})"
    if python.implementation != "cpython":
        return fail(f"{python.implementation} {python.version_string} is not CPython",
                    [where, "PyTorch, bitsandbytes and flash-attn publish wheels for CPython only."],
                    Remedy(VENV_HINT, "Create a CPython virtual environment and install the stack there."))
    if python.bits != 64:
        return fail(f"32-bit Python {python.version_string}", [where, "PyTorch has no 32-bit builds."],
                    Remedy(VENV_HINT, "Install a 64-bit CPython."))
    return ok(f"CPython {python.version_string}, 64-bit", [where])


@check("python.version", "Python version", "Python",
       "the Python version is one PyTorch and the fine-tuning stack ship wheels for", needs=("python",))
def version(python: PythonEnv) -> Result:
    v = tuple(python.version[:2])
    s = python.version_string
    if v < OLDEST_SUPPORTED:
        return fail(f"Python {s} is too old for PyTorch 2.x wheels",
                    ["PyTorch 2.9 and later need Python 3.10 or newer."], Remedy(VENV_HINT))
    if v < OLDEST_CURRENT:
        return warn(f"Python {s}: PyTorch 2.9 and later need Python 3.10+",
                    ["You are limited to torch 2.8 and older, and to wheels built for them."],
                    Remedy(VENV_HINT))
    if v > NEWEST_WITH_WHEELS:
        return warn(f"Python {s} is newer than the prebuilt wheels of the stack",
                    ["flash-attn and bitsandbytes may have no wheel yet, so pip will try to compile them."],
                    Remedy(VENV_HINT, "Use Python 3.10–3.13 for the training venv."))
    if python.free_threaded:
        return warn(f"Python {s} is a free-threaded (no-GIL) build",
                    ["Few compiled packages of the stack publish free-threaded wheels."], Remedy(VENV_HINT))
    return ok(f"Python {s}")


@check("python.environment", "Virtual environment", "Python",
       "the target is a virtualenv or conda env rather than the system interpreter", needs=("python",))
def environment(python: PythonEnv) -> Result:
    if python.in_venv:
        return ok(f"virtualenv at {python.prefix}")
    if python.conda:
        return ok(f"conda environment at {python.prefix}")
    # The venv is made with this very interpreter: its version is the one the user has.
    if python.externally_managed:
        return warn("system Python, marked externally managed: pip will refuse to install (PEP 668)",
                    [f"prefix {python.prefix}", "`envdoctor fix` refuses to install into it too."],
                    Remedy(venv_command(python), venv_text(python)))
    return warn("packages go into the system Python", [f"prefix {python.prefix}",
                "A venv keeps torch and its companions away from system packages."],
                Remedy(venv_command(python), venv_text(python)))
