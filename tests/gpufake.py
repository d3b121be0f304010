"""Fake GPU machines: NVML answers, nvidia-smi output, a torch install, an nvcc — the system, not the logic."""

from __future__ import annotations

import json
from pathlib import Path

from envbuild import SITE, dist, pyenv
from fakes import GiB, linux_box
from torchfake import install_torch

from envdoctor.system import CommandResult, NvmlUnavailable

H200 = {"index": 0, "name": "NVIDIA H200", "uuid": "GPU-1", "cc": [9, 0], "mem_total": 143771 * 2 ** 20,
        "mem_free": 143000 * 2 ** 20, "mem_used": 771 * 2 ** 20, "mig": False, "processes": []}
RTX5090 = {**H200, "name": "NVIDIA GeForce RTX 5090", "cc": [12, 0], "mem_total": 32 * GiB,
           "mem_free": 31 * GiB, "mem_used": 1 * GiB}
RTX4090 = {**H200, "name": "NVIDIA GeForce RTX 4090", "cc": [8, 9], "mem_total": 24 * GiB,
           "mem_free": 23 * GiB, "mem_used": 1 * GiB}
CU13_SASS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
CU126_SASS = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]


def nvml(driver: str, cuda: int, *gpus) -> dict:
    return {"driver": driver, "cuda_driver": cuda, "gpus": [dict(g) for g in gpus]}


def gpu_box(tmp_path: Path, nvml_answer=None, torch=None, nvcc: str | None = None, companions=(),
            commands=None, **kw):
    """A machine with NVML answering `nvml_answer` (or failing), a venv with torch `torch`
    = (version, cuda, sass, ptx), and optionally an nvcc of version `nvcc` in /usr/local/cuda."""
    system = linux_box(tmp_path, commands=commands, **kw)

    def answer():
        if nvml_answer is None:
            raise NvmlUnavailable("NVML: Driver Not Loaded")
        return nvml_answer
    system.nvml = answer
    dists = [dist("pip", "25.2")]
    if torch:
        version, cuda, sass, ptx = torch
        install_torch(system.root, SITE, version, cuda, sass, ptx)
        dists.append(dist("torch", version))
    for name, version in companions:
        dists.append(dist(name, version))
    if nvcc:
        system.write(f"/usr/local/cuda-{nvcc}/version.json", json.dumps({"cuda_nvcc": {"version": nvcc + ".1"}}))
        system.write(f"/usr/local/cuda-{nvcc}/bin/nvcc", "#!/bin/sh\n")
        system.path(f"/usr/local/cuda-{nvcc}/bin/nvcc").chmod(0o755)
        system.path("/usr/local/cuda").symlink_to(f"cuda-{nvcc}")
    return system, pyenv(*dists)


def smi_csv(*rows) -> CommandResult:
    return CommandResult(("nvidia-smi",), 0, "\n".join(rows) + "\n", "", 0.05)
