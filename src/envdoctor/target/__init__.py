"""Scripts the *target* interpreter runs, never imported by the doctor.

Every one runs the same way: `argv(python, "name", args…)` is `python -c <target/name.py's source> args…`,
run with `System.run` under a timeout. probe.py (stdlib only: interpreter and distributions), smoke.py
(deep-mode smoke tests: torch, bitsandbytes, flash-attn, torchao), importcheck.py (loads compiled
extensions for real), findspec.py (which modules a verb needs are missing), modelload.py (`check --model`:
transformers loads config and tokenizer, vLLM names the architectures it knows), stackimport.py (imports
one package of the training stack, reporting where an import failed). This is where `import
torch` may appear; nowhere else in src/envdoctor.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def source(name: str) -> str:
    return (HERE / f"{name}.py").read_text(encoding="utf-8")


def argv(python: str, name: str, *args: str) -> list[str]:
    """The command that runs target/<name>.py in `python` (as `-c`, so nothing of the script is left on disk
    in the target environment and its sys.path does not gain this folder)."""
    return [python, "-c", source(name), *args]
