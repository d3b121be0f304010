"""The runner's setting for torch's CUDA caching allocator, made before torch is imported.

Expandable segments: the allocator grows one mapped segment per stream instead of caching fixed-size
blocks, so memory freed by one phase of a step (the layer being recomputed, a loss chunk's logits) can be
reused by the next whatever its size, and the reserve (what runs out on a card) depends less on the order of
allocations: 0.4-2.8 GiB over the allocated peak across the runner's H200 calibration grid, where the default
allocator leaves the Hugging Face engines 0.5-20 GiB (docs/training.md "Memory"). A setting the user made
(PYTORCH_ALLOC_CONF, the older PYTORCH_CUDA_ALLOC_CONF, or ROCm's PYTORCH_HIP_ALLOC_CONF) is kept (and, for a
torch older than 2.9, copied where that torch reads it: below).

torch ≥ 2.9 takes the first of its variables that is present, an empty one included, in the order of KEYS
(measured on torch 2.11); older torch reads PYTORCH_CUDA_ALLOC_CONF alone. An empty one (`export PYTORCH_ALLOC_CONF=`) is removed, not left to mask the
setting made here, nor the user's own in a variable read after it; with a torch older than 2.9 a setting the
user made in another variable is copied into PYTORCH_CUDA_ALLOC_CONF, the one that torch reads (else it
would silently get torch's default). envdoctor's memory estimate, envdoctor.training.allocator.allocator_in_force,
counts on both.
"""

from __future__ import annotations

import os
import re

SETTING = "expandable_segments:True"
KEYS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF", "PYTORCH_ALLOC_CONF")  # torch >= 2.9's order
NEW_READER = (2, 9)  # the first torch that reads PYTORCH_ALLOC_CONF (and the others) besides PYTORCH_CUDA_ALLOC_CONF


def installed_torch() -> tuple[int, int] | None:
    """(major, minor) of the torch this interpreter would import, from its metadata (torch is not imported)."""
    try:
        from importlib.metadata import version
        found = re.match(r"(\d+)\.(\d+)", version("torch"))
    except Exception:  # noqa: BLE001 - no torch, or metadata without a version: best effort, never a crash here
        return None
    return (int(found[1]), int(found[2])) if found else None


def configure(environ=None, torch_version: tuple[int, int] | None = None) -> str:
    """Set the runner's allocator setting unless the user chose one; returns the setting in force ('' = the
    default allocator). Must run before torch initialises CUDA (it reads the variable once). `torch_version`:
    (major, minor), default the installed torch's (None when unknown: taken as a current one)."""
    env = os.environ if environ is None else environ
    version = torch_version if torch_version is not None else installed_torch()
    for key in KEYS:  # present but blank: torch would read it (as the default allocator) before ours or the user's
        if key in env and not env[key].strip():
            del env[key]
    old_reader = version is not None and tuple(version) < NEW_READER  # reads PYTORCH_CUDA_ALLOC_CONF alone
    for key in KEYS:
        if key in env:
            if old_reader:
                env.setdefault("PYTORCH_CUDA_ALLOC_CONF", env[key])
                return env["PYTORCH_CUDA_ALLOC_CONF"].strip()
            return env[key].strip()
    env["PYTORCH_CUDA_ALLOC_CONF"] = SETTING
    return SETTING
