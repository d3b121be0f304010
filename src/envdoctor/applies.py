"""What a check applies to. A check declares it (`@check(..., applies=("gpu",))`); when a condition does
not hold on this machine, the check is not run and reports the condition's skip instead. The skips live
here once, so every GPU check says the same thing on a machine without a GPU, and every WSL check stays
quiet off WSL. (Options such as --deep or --config are the other half of the declaration: `option=` on
the check, which decides whether it is selected at all.)"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from envdoctor.model import Result, skip

NO_GPU = "no NVIDIA GPU found"
NOT_WSL = "not WSL"


def no_gpu(gpu) -> str:
    """Why a GPU check has nothing to judge: no GPU, or one the tools cannot read (gpu.driver fails then)."""
    return "the GPU's tools failed (see gpu.driver)" if gpu.signals else NO_GPU


@dataclass(frozen=True)
class Condition:
    fact: str                          # the fact provider it reads
    holds: Callable[[object], bool]
    otherwise: Callable[[object], Result]  # the skip the check reports when it does not hold


CONDITIONS: dict[str, Condition] = {
    "gpu": Condition("gpu", lambda gpu: gpu.present, lambda gpu: skip(no_gpu(gpu))),
    # WSL1 or WSL2: wsl.version judges which.
    "wsl": Condition("wsl", lambda wsl: wsl.version is not None, lambda wsl: skip(NOT_WSL, quiet=True)),
    # The CUDA-on-WSL plumbing exists on WSL2 only; on WSL1 wsl.version fails and says why.
    "wsl2": Condition("wsl", lambda wsl: wsl.version == 2, lambda wsl: skip(NOT_WSL, quiet=True)),
}


def not_applicable(applies: tuple[str, ...], facts: dict) -> Result | None:
    """The skip of the first condition that does not hold (facts by provider name), else None."""
    for name in applies:
        cond = CONDITIONS[name]
        if not cond.holds(facts[cond.fact]):
            return cond.otherwise(facts[cond.fact])
    return None
