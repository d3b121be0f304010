"""GPU checks: driver, devices, memory in use, torch build vs GPU and driver, nvcc, bf16."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from envdoctor import tables
from envdoctor.applies import NO_GPU
from envdoctor.facts.gpu import GpuFacts
from envdoctor.facts.host import GiB, HostFacts
from envdoctor.facts.python_env import PythonEnv
from envdoctor.facts.toolkit import ToolkitFacts
from envdoctor.facts.torch_build import TorchFacts
from envdoctor.gpu_compat import (Build, companion_pins, coverage, min_driver, parse_arch, pick_build, sm_name,
                                  tag_cuda)
from envdoctor.model import Item, Remedy, Result, Status, fail, from_items, ok, skip, warn
from envdoctor.registry import check

if TYPE_CHECKING:  # fix requests load where a remedy is built (a failure): not on every run
    from envdoctor.repair.requests import ReinstallTorch

BUSY_FRACTION, BUSY_BYTES = 0.10, 1 * GiB


def _cuda(t: tuple[int, int] | None) -> str:
    return f"{t[0]}.{t[1]}" if t else "?"


def torch_specs(python: PythonEnv, build: Build) -> list[str]:
    installed = [n for n in ("torchvision", "torchaudio") if python.get(n)]
    minor = ".".join(build.version.split(".")[:2])
    return [f"torch=={build.version}"] + companion_pins(minor, installed)


def torch_request(python: PythonEnv, build: Build) -> ReinstallTorch:
    from envdoctor.repair.requests import ReinstallTorch
    return ReinstallTorch(tuple(torch_specs(python, build)), build.index_url)


def _torch_remedy(python: PythonEnv, gpu: GpuFacts, torch: TorchFacts, why: str) -> Remedy:
    from envdoctor.repair.requests import remedy as fix_remedy
    ccs = [g.cc for g in gpu.gpus if g.cc]
    build, driver_ok = pick_build(ccs, gpu.cuda_driver, torch.minor if torch.installed else None)
    if build is None:
        return Remedy(text=f"No PyTorch build in envdoctor's table runs on {', '.join(map(sm_name, ccs))}.")
    text = f"torch {build.version} {build.tag} {why}."
    if not driver_ok:
        cuda = tag_cuda(build.tag)
        text += f" It needs a driver for CUDA {_cuda(cuda)} (≥ {min_driver(cuda)}): upgrade the driver first."
    return fix_remedy(torch_request(python, build), python, text)


_TOOL_REMEDY = Remedy("nvidia-smi; sudo dmesg | grep -iE 'xid|nvrm' | tail",
                      "The driver's user-space tools do not match the loaded kernel module (after a driver "
                      "upgrade: reboot), or the driver is broken (reinstall it). On WSL2 update the Windows "
                      "NVIDIA driver; do not install a Linux driver inside WSL.")


@check("gpu.driver", "NVIDIA driver", "GPU", "the driver answers (NVML, else nvidia-smi) and its CUDA level",
       needs=("gpu",))
def driver(gpu: GpuFacts) -> Result:
    if gpu.hung:
        return fail("nvidia-smi hangs: the driver may be wedged", gpu.attempts,
                    Remedy("sudo dmesg | grep -iE 'xid|nvrm' | tail", "Look for Xid errors; a reboot (or reloading "
                           "the nvidia module) clears a wedged driver."))
    if gpu.unreadable and gpu.present:
        return fail(f"nvidia-smi printed {len(gpu.unreadable)} line(s) that are not a GPU row: GPUs may be missing "
                    f"from this report", gpu.unreadable + [f"read: GPU {g.index} {g.name}" for g in gpu.gpus],
                    _TOOL_REMEDY)
    if not gpu.present and gpu.signals:
        why = gpu.tool_failed or (f"{len(gpu.unreadable)} unreadable line(s) from nvidia-smi" if gpu.unreadable
                              else "NVML and nvidia-smi list no GPU")
        return fail(f"the platform shows an NVIDIA GPU but its tools do not: {why}",
                    [f"shows a GPU: {s}" for s in gpu.signals] + gpu.attempts + gpu.unreadable, _TOOL_REMEDY)
    if not gpu.present:
        return skip(NO_GPU, gpu.attempts)
    n = len(gpu.gpus)
    return ok(f"driver {gpu.driver}, CUDA ≤ {_cuda(gpu.cuda_driver)}, {n} GPU{'s' if n > 1 else ''} "
              f"(via {gpu.source})", gpu.attempts)


@check("gpu.devices", "GPUs", "GPU", "every GPU: name, compute capability, memory, MIG mode", needs=("gpu",),
       applies=("gpu",))
def devices(gpu: GpuFacts) -> Result:
    items = []
    for g in gpu.gpus:
        desc = f"GPU {g.index}: {g.name} ({g.sm or 'cc ?'}, {(g.mem_total or 0) / GiB:.1f} GiB)"
        if g.mig:
            items.append(Item(Status.WARN, desc + ", MIG mode on", (
                "Each MIG instance has a slice of the memory; address it by its MIG UUID in "
                "CUDA_VISIBLE_DEVICES (nvidia-smi -L lists them).",),
                Remedy(f"sudo nvidia-smi -i {g.index} -mig 0", "Turn MIG off to train on the whole GPU.")))
        else:
            items.append(Item(Status.OK, desc))
    summary = "; ".join(i.message for i in items)
    return from_items(items, summary, summary)


@check("gpu.memory", "GPU memory in use", "GPU", "GPU memory already held by other processes", needs=("gpu",),
       applies=("gpu",))
def memory(gpu: GpuFacts) -> Result:
    items = []
    for g in gpu.gpus:
        held = sum(p["used"] for p in g.processes) if g.processes else (g.mem_used or 0)
        if g.mem_total and (held > BUSY_BYTES or held > BUSY_FRACTION * g.mem_total):
            procs = tuple(f"pid {p['pid']} {p['name']}: {p['used'] / GiB:.1f} GiB" for p in g.processes)
            items.append(Item(Status.WARN, f"GPU {g.index}: {held / GiB:.1f} GiB of {g.mem_total / GiB:.1f} GiB "
                              "held by other processes", procs or ("nvidia-smi shows who holds it",),
                              Remedy(f"nvidia-smi --query-compute-apps=pid,process_name,used_memory "
                                     f"--format=csv -i {g.index}", "Stop them, or train on another GPU.")))
    return from_items(items, f"no other process holds GPU memory on {len(gpu.gpus)} GPU(s)",
                      f"{len(items)} GPU(s) partly in use")


@check("gpu.torch", "PyTorch build", "GPU", "torch is installed and is a CUDA build on a machine with NVIDIA GPUs",
       needs=("gpu", "torch", "python"), applies=("gpu",))
def torch_build(gpu: GpuFacts, torch: TorchFacts, python: PythonEnv) -> Result:
    if not torch.installed:
        return warn("torch is not installed", ["Everything in the QLoRA stack needs it."],
                    _torch_remedy(python, gpu, torch, "runs on these GPUs and this driver"))
    if torch.hip:
        return fail(f"torch {torch.version} is a ROCm build on an NVIDIA machine", [],
                    _torch_remedy(python, gpu, torch, "is the CUDA build for these GPUs"))
    if torch.cuda is None:
        return fail(f"torch {torch.version} is a CPU-only build: the GPU is never used",
                    ["torch.cuda.is_available() is False with this build; training falls back to the CPU or fails "
                     "in bitsandbytes."], _torch_remedy(python, gpu, torch, "is the CUDA build for these GPUs"))
    abi = {True: ", cxx11 ABI", False: ", pre-cxx11 ABI", None: ""}[torch.cxx11_abi]
    return ok(f"torch {torch.version} (CUDA {torch.cuda}{abi})",
              [f"CUDA runtime wheels: {', '.join(f'{k} {v}' for k, v in sorted(torch.cuda_wheels.items()))}"]
              if torch.cuda_wheels else [])


@check("gpu.driver_cuda", "Driver vs torch CUDA", "GPU", "the driver runs the CUDA version torch was built with",
       needs=("gpu", "torch", "host", "python"), applies=("gpu",))
def driver_cuda(gpu: GpuFacts, torch: TorchFacts, host: HostFacts, python: PythonEnv) -> Result:
    need, have = torch.cuda_tuple, gpu.cuda_driver
    if need is None:
        return skip("torch is not a CUDA build")
    if have is None:
        return warn(f"driver {gpu.driver}: its CUDA level is unknown")
    windows = host.wsl == 2
    bundled = min_driver(need, windows)
    where = "Windows driver (WSL2 uses it)" if windows else "driver"
    if have >= need:
        return ok(f"driver {gpu.driver} runs CUDA {_cuda(have)} ≥ torch's {torch.cuda}")
    if have[0] == need[0]:
        return warn(f"driver {gpu.driver} (CUDA {_cuda(have)}) is older than torch's CUDA {torch.cuda}",
                    ["Minor-version compatibility runs most kernels, but PTX JIT and newer runtime features fail."],
                    Remedy(text=f"Upgrade the {where} to ≥ {bundled}."))
    remedy = _torch_remedy(python, gpu, torch, f"runs on CUDA {_cuda(have)}")
    text = f"Upgrade the {where} to ≥ {bundled}, or install the build for this driver."
    return fail(f"driver {gpu.driver} supports CUDA ≤ {_cuda(have)}, but torch {torch.version} needs CUDA "
                f"{torch.cuda}", ["CUDA initialisation fails: 'The NVIDIA driver on your system is too old'."],
                dataclasses.replace(remedy, text=text + (" " + remedy.text if remedy.text else "")))


@check("gpu.arch", "Kernels for this GPU", "GPU",
       "torch's compiled GPU architectures (SASS and PTX, from its fat binaries) cover every GPU",
       needs=("gpu", "torch", "python"), applies=("gpu",))
def arch(gpu: GpuFacts, torch: TorchFacts, python: PythonEnv) -> Result:
    if not torch.installed or torch.cuda is None:
        return skip("torch is not a CUDA build")
    sass, ptx = torch.archs["sass"], torch.archs["ptx"]
    if not sass and not ptx:
        return skip("no CUDA kernels found in torch's libraries", [f"looked in {torch.path}/lib"])
    items = []
    for g in gpu.gpus:
        if not g.cc:
            continue
        cov = coverage(g.cc, sass, ptx)
        if cov.sass:
            items.append(Item(Status.OK, f"GPU {g.index} {g.name} ({g.sm}) runs {cov.sass}"))
        elif cov.ptx:
            items.append(Item(Status.WARN, f"GPU {g.index} {g.name} ({g.sm}) only runs through PTX JIT of {cov.ptx}",
                              ("The first launch of every kernel compiles it (minutes), and kernels without PTX "
                               "fail.",), _torch_remedy(python, gpu, torch, f"has native {g.sm} kernels")))
        else:
            items.append(Item(Status.FAIL, f"{g.name} ({g.sm}) is not supported by torch {torch.version}", (
                f"This build has kernels for {', '.join(sass + ptx)}.",
                f"It fails with '{g.sm} is not compatible with the current PyTorch installation', then "
                "'no kernel image is available for execution on the device'."),
                _torch_remedy(python, gpu, torch, f"has {g.sm} kernels")))
    built = f"built for {', '.join(sass + ptx)}"
    extra = torch.archs.get("extra") or []
    bad = [i for i in items if i.status != Status.OK]
    result = from_items(items, "; ".join(i.message for i in items) + f" ({built})",
                        bad[0].message if len(bad) == 1 else f"{len(bad)} GPUs lack kernels",
                        details=[built] + ([f"a few kernels also for {', '.join(extra)}"] if extra else []))
    if bad and all(i.remedy == bad[0].remedy for i in bad):
        result.remedy = bad[0].remedy
    return result


@check("gpu.bf16", "bf16 support", "GPU", "compute capability ≥ 8.0 for the bf16 QLoRA compute dtype",
       needs=("gpu",), applies=("gpu",))
def bf16(gpu: GpuFacts) -> Result:
    old = [g for g in gpu.gpus if g.cc and tuple(g.cc) < (8, 0)]
    if old:
        names = ", ".join(f"{g.name} ({g.sm})" for g in old)
        return warn(f"no bf16 on {names}", ["bf16 needs compute capability 8.0 (Ampere) or newer; bf16 configs "
                                           "fail or run emulated and slow."],
                    Remedy(text="Train in fp16: bnb_4bit_compute_dtype: float16, bf16: false, fp16: true."))
    return ok("every GPU supports bf16")


def _nvcc_min(sm: str) -> tuple[int, int] | None:
    table = tables.load("cuda")["nvcc_min"]
    a = parse_arch(sm)
    best = None
    for name, v in table.items():
        b = parse_arch(name)
        if b and b[0] == a[0] and b[1] <= a[1]:
            best = tuple(int(x) for x in v.split("."))
    return best


@check("gpu.nvcc", "CUDA compiler", "GPU",
       "an nvcc matching torch's CUDA major for source builds (flash-attn), and new enough for the GPU",
       needs=("toolkit", "torch", "python", "gpu"), applies=("gpu",))
def nvcc(toolkit: ToolkitFacts, torch: TorchFacts, python: PythonEnv, gpu: GpuFacts) -> Result:
    if not torch.installed or torch.cuda_tuple is None:
        return skip("torch is not a CUDA build")
    fa = python.get("flash-attn")
    must_build = fa is None
    purpose = "flash-attn is not installed; building it needs nvcc" if must_build else "flash-attn is installed"
    pick = toolkit.for_builds
    want = torch.cuda_tuple
    install = Remedy(text=f"Install the CUDA {torch.cuda} toolkit (e.g. apt install cuda-toolkit-"
                          f"{want[0]}-{want[1]}, or conda install -c nvidia cuda-nvcc={torch.cuda}) and "
                          f"export CUDA_HOME=/usr/local/cuda-{torch.cuda}.")
    if pick is None:
        if must_build:
            return warn("no nvcc: flash-attn can only come from a prebuilt wheel", [purpose], install)
        return ok("no nvcc (nothing needs compiling: flash-attn is installed)")
    have = pick.major_minor
    where = f"nvcc {pick.version} at {pick.path} ({', '.join(pick.found_by)})"
    if have is None:
        return warn(f"{where}: version unknown")
    if have[0] != want[0]:
        better = next((n for n in toolkit.nvccs if n.major_minor and n.major_minor[0] == want[0]), None)
        fix = (Remedy(f"export CUDA_HOME={better.path.rsplit('/bin/', 1)[0]}",
                      f"nvcc {better.version} is installed: point CUDA_HOME at it.") if better else install)
        msg = f"{where} is CUDA {have[0]}, torch is CUDA {torch.cuda}"
        details = ["torch.utils.cpp_extension refuses to build with a different CUDA major.", purpose]
        return (fail if must_build else warn)(msg, details, fix)
    too_old = []
    for g in gpu.gpus:
        need = _nvcc_min(g.sm) if g.cc else None
        if need and have < need:
            too_old.append(f"{g.sm} needs nvcc ≥ {_cuda(need)}")
    if too_old:
        return (fail if must_build else warn)(f"{where} cannot compile for this GPU", too_old + [purpose], install)
    others = [f"also nvcc {n.version} at {n.path}" for n in toolkit.nvccs if n is not pick]
    return ok(f"{where} matches torch's CUDA {torch.cuda}", others)
