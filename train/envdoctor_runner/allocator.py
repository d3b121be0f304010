"""The runner's setting for torch's CUDA caching allocator, made before torch is imported.

Expandable segments: the allocator grows one mapped segment per stream instead of caching fixed-size
blocks, so memory freed by one phase of a step (the layer being recomputed, a loss chunk's logits) can be
reused by the next whatever its size, and the reserve (what runs out on a card) depends less on the order of
allocations: 0.4-2.8 GiB over the allocated peak across the runner's H200 calibration grid, where the default
allocator leaves the Hugging Face engines 0.5-20 GiB (docs/training.md "Memory"). A setting the user made
(PYTORCH_ALLOC_CONF, the older PYTORCH_CUDA_ALLOC_CONF, or ROCm's PYTORCH_HIP_ALLOC_CONF) is kept as it is.

torch takes the first of its variables that is present, an empty one included, and which it reads first
differs between versions: an empty one (`export PYTORCH_ALLOC_CONF=`) is removed, not left to mask the
setting made here, nor the user's own in a variable read after it (envdoctor's memory estimate,
envdoctor.training.allocator.allocator_in_force, counts on this).
"""

from __future__ import annotations

import os

SETTING = "expandable_segments:True"
KEYS = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF")


def configure(environ=None) -> str:
    """Set the runner's allocator setting unless the user chose one; returns the setting in force ('' = the
    default allocator). Must run before torch initialises CUDA (it reads the variable once)."""
    env = os.environ if environ is None else environ
    for key in KEYS:  # present but blank: torch would read it (as the default allocator) before ours or the user's
        if key in env and not env[key].strip():
            del env[key]
    for key in KEYS:
        if key in env:
            return env[key].strip()
    env["PYTORCH_CUDA_ALLOC_CONF"] = SETTING
    return SETTING
