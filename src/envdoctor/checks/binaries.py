"""Compiled extensions against the installed torch: predicted import failures, from the ELF files."""

from __future__ import annotations

import re

from packaging.utils import canonicalize_name

from envdoctor import tables
from envdoctor.buildjobs import JOB_GIB, NVCC_THREADS, flash_attn_jobs
from envdoctor.cpu_torch import bnb_cpu_item, cuda_build_remedy, flash_attn_needs_cuda, torch_is_cpu_only
from envdoctor.facts.binaries import BinaryFacts, Extension
from envdoctor.facts.gpu import GpuFacts
from envdoctor.facts.host import GiB, HostFacts
from envdoctor.facts.python_env import PythonEnv
from envdoctor.facts.torch_build import TorchFacts
from envdoctor.flashattn_wheel import flash_attn_wheel_url
from envdoctor.gpu_compat import companion_pins
from envdoctor.model import Item, Remedy, Result, Status, from_items, ok, skip
from envdoctor.pins import index_url
from envdoctor.registry import check

FA_TAG = re.compile(r"\+cu(\d+)torch(\d+\.\d+)cxx11abi(TRUE|FALSE)", re.I)


def built_for(ext: Extension, python: PythonEnv) -> str | None:
    """The torch an extension was built for, where its version says so."""
    m = FA_TAG.search(ext.version or "")
    if m:
        return m[2]
    row = tables.load("companions")["by_torch_minor"]
    minor = ".".join((ext.version or "").split("+")[0].split(".")[:2])
    for torch_minor, comps in row.items():
        if comps.get(ext.dist.lower()) == minor:
            return torch_minor
    return None


def what_fails(ext: Extension) -> str:
    return f"`import {ext.module}` will fail" if ext.module else f"loading {ext.rel} will fail"


def explain(ext: Extension, torch: TorchFacts, python: PythonEnv) -> tuple[str, tuple[str, ...]]:
    head = what_fails(ext)
    details = []
    if ext.unresolved:
        libs = ", ".join(u["name"] for u in ext.unresolved)
        cuda_libs = [u["name"] for u in ext.unresolved if "cuda" in u["name"]]
        why = f"{libs} not found"
        if cuda_libs and not torch.cuda:
            why += f" ({ext.dist} {ext.version} is a CUDA build; torch {torch.version} is CPU-only)"
        details += [f"{u['name']}: searched {', '.join(u['searched'])}" for u in ext.unresolved]
        return f"{head}: {why}", tuple(details)
    first = ext.missing[0]
    abi_clash = (ext.abi == "pre-cxx11" and torch.cxx11_abi) or (ext.abi == "cxx11" and torch.cxx11_abi is False)
    if abi_clash:
        theirs = "the cxx11 ABI" if torch.cxx11_abi else "the pre-cxx11 ABI"
        msg = (f"{head}: built with the {ext.abi} C++ ABI, torch {torch.version} uses {theirs}; it needs "
               f"{first['demangled']}, which torch does not export")
    else:
        target = built_for(ext, python)
        built = f"built for torch {target}, it" if target and target != torch.minor else "it"
        msg = f"{head}: {built} needs {first['demangled']}, which torch {torch.version} does not export"
    for m in ext.missing:
        details.append(f"undefined symbol: {m['mangled']}")
        details += [f"torch exports instead: {i}" for i in m["instead"]]
    return msg, tuple(details[:8])


def flash_attn_remedy(version: str, torch: TorchFacts, python: PythonEnv, gpu: GpuFacts, host: HostFacts) -> Remedy:
    """One request, printed and planned: the command is the request's one step as a shell line (script and
    variables), so what a user copies is exactly what `envdoctor fix flash-attn.rebuild` runs."""
    from envdoctor.repair.requests import RebuildFlashAttn, remedy as fix_remedy
    if torch_is_cpu_only(torch):
        return flash_attn_needs_cuda(torch)
    jobs = flash_attn_jobs(host)
    archs = ";".join(sorted({f"{g.cc[0]}{g.cc[1]}" for g in gpu.gpus if g.cc})) if gpu.present else ""
    url = flash_attn_wheel_url(version, torch, python)
    free = (host.mem_available or 0) / GiB
    request = RebuildFlashAttn(version, url, jobs, NVCC_THREADS, archs,
                               f"torch=={torch.version}" if torch.version else None)
    return fix_remedy(request, python,
                      f"Install the release wheel {url.rsplit('/', 1)[-1]} if it exists, else rebuild it against this "
                      f"torch (MAX_JOBS={jobs}: {free:.0f} GiB free at ~{JOB_GIB} GiB a job, at most the CPUs); torch "
                      "stays pinned.")


def remedy_for(ext: Extension, torch: TorchFacts, python: PythonEnv, gpu: GpuFacts, host: HostFacts) -> Remedy:
    from envdoctor.local_build import rebuild_remedy
    from envdoctor.repair.requests import AlignCompanions, remedy as fix_remedy, torch_pin
    key = canonicalize_name(ext.dist)
    if key == "flash-attn":
        return flash_attn_remedy((ext.version or "").split("+")[0], torch, python, gpu, host)
    if torch_is_cpu_only(torch) and any("cuda" in u["name"] for u in ext.unresolved) and key not in (
            "torchvision", "torchaudio"):
        # A CUDA build beside a CPU torch: reinstalling it would bring back the same CUDA build.
        return cuda_build_remedy(python, ext.dist, ext.version, torch)
    if key in ("torchvision", "torchaudio") and torch.minor:
        pins = companion_pins(torch.minor, [key])
        if pins:
            return fix_remedy(AlignCompanions(tuple(pins), index_url(torch.build_tag), True, torch_pin(python)),
                              python, f"Install the {key} built for torch {torch.version}.")
    # Built against another torch: reinstalling the same version brings back the same binary (or finds
    # nothing, for a build no index has). Its recorded source, rebuilt against this torch, is the fix.
    return rebuild_remedy(python, ext.dist, ext.version, torch)


@check("binaries.extensions", "Compiled extensions", "Binaries",
       "every installed shared object linking torch or CUDA: libraries that will not load, torch symbols "
       "torch does not export, C++ ABI", needs=("binaries", "torch", "python", "gpu", "host"))
def extensions(binaries: BinaryFacts, torch: TorchFacts, python: PythonEnv, gpu: GpuFacts, host: HostFacts) -> Result:
    if not torch.installed:
        return skip("torch is not installed")
    items = []
    for ext in binaries.extensions:
        if ext.will_fail:
            msg, details = explain(ext, torch, python)
            items.append(Item(Status.FAIL, msg, details, remedy_for(ext, torch, python, gpu, host)))
        elif ext.conflicts and not ext.unused:
            items.append(Item(Status.WARN, f"{ext.rel} loads, but was {ext.conflicts[0]}", (),
                              remedy_for(ext, torch, python, gpu, host)))
    bnb = bnb_cpu_item(python, torch)
    if bnb is not None:
        items.append(bnb)
    used = [e for e in binaries.extensions if not e.unused]
    cached = f", {binaries.from_cache} from cache" if binaries.from_cache else ""
    failing = sum(1 for i in items if i.status == Status.FAIL and i is not bnb)
    return from_items(items, f"{len(used)} compiled extensions link against torch {torch.version}: all resolve "
                             f"({binaries.files_scanned} shared objects read in {binaries.seconds * 1000:.0f} ms"
                             f"{cached})",
                      f"{failing} compiled extension(s) will fail to load" if failing else
                      bnb.message if bnb is not None and len(items) == 1 else
                      f"{len(items)} compiled extension(s) do not fit torch {torch.version}")


@check("binaries.flash_attn", "flash-attn build", "Binaries",
       "flash-attn's wheel tag (+cuXXtorchX.Ycxx11abiX) against the installed torch, CUDA and ABI",
       needs=("binaries", "torch", "python", "gpu", "host"))
def flash_attn(binaries: BinaryFacts, torch: TorchFacts, python: PythonEnv, gpu: GpuFacts, host: HostFacts) -> Result:
    fa = python.get("flash-attn")
    if fa is None:
        return skip("flash-attn is not installed")
    exts = [e for e in binaries.extensions if canonicalize_name(e.dist) == "flash-attn"]
    fails = any(e.will_fail for e in exts)
    m = FA_TAG.search(fa.version or "")
    if not m:
        if fails:
            return Result(Status.FAIL, f"flash-attn {fa.version} was built here from source, for another torch "
                                       "(see binaries.extensions)")
        return ok(f"flash-attn {fa.version} was built here from source; its symbols resolve")
    cu, tminor, abi = m[1], m[2], m[3].upper() == "TRUE"
    diffs = []
    if torch.minor and tminor != torch.minor:
        diffs.append(f"torch {tminor} (installed {torch.version})")
    if torch.cuda and cu != torch.cuda.split(".")[0]:
        diffs.append(f"CUDA {cu} (torch has CUDA {torch.cuda})")
    if torch.cxx11_abi is not None and abi != torch.cxx11_abi:
        diffs.append(f"cxx11abi{str(abi).upper()} (torch is cxx11abi{str(torch.cxx11_abi).upper()})")
    if not diffs:
        return ok(f"flash-attn {fa.version} matches torch {torch.version}")
    ext = exts[0] if exts else Extension(fa.name, fa.version, fa.path, "", "flash_attn_2_cuda")
    status = Status.FAIL if fails else Status.WARN
    tail = "" if fails else "; its symbols resolve today, but this combination is untested"
    return Result(status, f"flash-attn {fa.version} was built for {', '.join(diffs)}{tail}", [],
                  remedy_for(ext, torch, python, gpu, host))
