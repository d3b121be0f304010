"""Plans: what a fix will run, with which parameters, and which checks it must turn green.

A planner merges the typed requests (repair/requests.py) of every failing finding that names its fix id
into one plan. The steps are the requests' own steps (the same ones their printed commands are made of);
each runs one script from fixes/ with environment variables and arguments; nothing else is executed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from envdoctor.facts.python_env import PythonEnv
from envdoctor.facts.torch_build import TorchFacts
from envdoctor.flashattn_wheel import FA_WHEEL_URL, flash_attn_wheel_url
from envdoctor.repair.requests import coerce
from envdoctor.repair.script import Step, step_command as _step_command


@dataclass
class FileEdit:
    """A user's file rewritten: backed up byte for byte first, written atomically, in its own encoding."""

    path: str
    old: bytes | None        # None: the file does not exist yet
    new: bytes
    diff: str


@dataclass
class Plan:
    fix_id: str
    title: str
    steps: list[Step]
    targets: list[str]               # check ids that must pass afterwards
    pin_torch: str | None = None     # "torch==2.8.0+cu128" written to a constraints file, or None
    notes: list[str] = field(default_factory=list)
    edits: list[FileEdit] = field(default_factory=list)
    afterwards: list[str] = field(default_factory=list)   # what the user must do next (restart WSL)


@dataclass(frozen=True)
class Fix:
    id: str
    title: str
    targets: tuple[str, ...]
    planner: Callable[..., Plan | None]


def _merged_steps(requests) -> list[Step]:
    steps: list[Step] = []
    for req in requests:
        for step in req.steps():
            if all(s.description != step.description for s in steps):
                steps.append(step)
    return steps


def _pin(python: PythonEnv, torch: TorchFacts | None, requests=()) -> str | None:
    """The torch pin the requests carry (computed by the check), else the installed torch's."""
    for req in requests:
        if getattr(req, "torch_pin", None):
            return req.torch_pin
    dist = python.get("torch") if python is not None else None
    version = (torch.version if torch and torch.installed else None) or (dist.version if dist else None)
    return f"torch=={version}" if version else None


def _target(fix_id: str) -> list[str]:
    return list(FIXES[fix_id].targets)


def plan_install_missing(requests, python, torch, system) -> Plan | None:
    reqs = coerce("packages.install-missing", requests)
    steps = _merged_steps(reqs)
    if not steps:
        return None
    pin = _pin(python, torch, reqs)
    # One pip call each: a failure names its package, and the ones before it are rolled back.
    return Plan("packages.install-missing", "Install missing and conflicting requirements", steps,
                _target("packages.install-missing"), pin,
                [f"torch stays {pin.split('==')[1]} (constraints file)"] if pin else [])


def plan_align_companions(requests, python, torch, system) -> Plan | None:
    reqs = coerce("packages.align-companions", requests)
    steps = _merged_steps(reqs)
    if not steps:
        return None
    return Plan("packages.align-companions", "Install the torchvision/torchaudio/torchao built for this torch",
                steps, _target("packages.align-companions"), _pin(python, torch, reqs),
                ["--no-deps and a constraints file: torch itself is not touched"])


def plan_torch_reinstall(requests, python, torch, system) -> Plan | None:
    reqs = coerce("torch.reinstall", requests)
    if not reqs:
        return None
    # One torch: a GPU finding's build (each computes the same one; installing it replaces every file),
    # else the same version over a damaged install.
    req = next((r for r in reqs if not r.force), reqs[0])
    notes = (["the same version over a damaged install: --force-reinstall --no-deps (its dependencies stay)"]
             if req.force else ["this fix exists to change torch: no constraints file",
                                "packages built against the old torch (flash-attn) may need rebuilding afterwards"])
    return Plan("torch.reinstall", "Install the PyTorch build for these GPUs and this driver" if not req.force
                else "Reinstall torch over its damaged files", req.steps(),
                _target("torch.reinstall") + (["packages.metadata"] if req.force else []), None, notes)


def plan_flash_attn(requests, python, torch, system) -> Plan | None:
    """One step: the script with every parameter as a variable. The finding prints this same call (both
    come from the RebuildFlashAttn request), so what a user copies is the fix."""
    reqs = coerce("flash-attn.rebuild", requests)
    if not reqs:
        return None
    req = reqs[0]
    pattern = system.env.get("ENVDOCTOR_FLASH_ATTN_WHEEL_URL") if system is not None else None
    if pattern:
        req = replace(req, wheel_url=flash_attn_wheel_url(req.version, torch, python, pattern))
    if not req.torch_pin:
        req = replace(req, torch_pin=_pin(python, torch))
    return Plan("flash-attn.rebuild", "Replace flash-attn with a build for this torch", req.steps(),
                _target("flash-attn.rebuild"), None,
                [f"wheel tried first: {req.wheel_url}" + (" (FA pattern from ENVDOCTOR_FLASH_ATTN_WHEEL_URL)"
                                                          if pattern else
                                                          f" (pattern {FA_WHEEL_URL.split('/download/')[0]}/…)"),
                 f"source build: MAX_JOBS={req.max_jobs} NVCC_THREADS={req.nvcc_threads} "
                 f"FLASH_ATTN_CUDA_ARCHS={req.archs or '(flash-attn default)'} --no-build-isolation",
                 f"torch stays {req.torch_pin} (the script writes it to a constraints file)"])


def plan_pure_wheel(requests, python, torch, system) -> Plan | None:
    """A release's pure-Python wheel in place of its CUDA platform wheel (torchao beside a CPU torch)."""
    reqs = coerce("packages.pure-wheel", requests)
    specs = [s for r in reqs for s in r.specs]
    if not specs:
        return None
    merged = type(reqs[0])(tuple(dict.fromkeys(specs)))
    return Plan("packages.pure-wheel", "Replace CUDA builds with the release's pure-Python wheel", merged.steps(),
                _target("packages.pure-wheel"), None,
                ["--no-deps: torch is not touched (no constraints file needed); the finding prints this same call"])


def plan_upgrade(requests, python, torch, system) -> Plan | None:
    """A newer release in place of one that cannot work here (bitsandbytes < 0.46 on a CPU-only box)."""
    reqs = coerce("packages.install-newer", requests)
    steps = _merged_steps(reqs)
    if not steps:
        return None
    pin = _pin(python, torch, reqs)
    return Plan("packages.install-newer", "Install the first release that works on this machine", steps,
                _target("packages.install-newer"), pin,
                [f"torch stays {pin.split('==')[1]} (constraints file)"] if pin else [])


def step_command(step: Step, python: PythonEnv) -> str:
    """A step as the copyable shell line a finding prints: the same script, the same variables."""
    return _step_command(step, python.executable)


def plan_wsl_memory(requests, python, torch, system) -> Plan | None:
    """The same editor as `envdoctor wslconfig set`: only the values change, read back as WSL reads them."""
    from envdoctor.wslconfig_edit import EditError, plan_file
    reqs = coerce("wsl.memory", requests)
    if not reqs:
        return None
    req = reqs[0]
    values = dict(req.values)
    try:
        fp = plan_file(system, req.path, values)
    except EditError as exc:
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        return Plan("wsl.memory", "Give the WSL VM enough memory (.wslconfig)", [], [],
                    notes=[f"not changed: {exc}", f"or set {shown} in [wsl2] by hand"])
    if not fp.changed:
        return None
    return Plan("wsl.memory", "Give the WSL VM enough memory (.wslconfig)", [], ["wsl.config"],
                edits=[FileEdit(fp.path, fp.old, fp.new, fp.diff)],
                notes=fp.notes + ["only the values change: every other byte (spacing, comments, encoding, line "
                                  "endings) stays; the old file is kept as a timestamped backup"],
                afterwards=["In Windows (PowerShell or cmd): wsl --shutdown", "Wait ~8 seconds, then reopen the "
                            "distro: the VM starts with the new memory (or pass --restart-wsl to do this now)"])


def plan_remove_leftovers(requests, python, torch, system) -> Plan | None:
    reqs = coerce("packages.remove-leftovers", requests)
    paths = list(dict.fromkeys(p for r in reqs for p in r.paths))
    if not paths:
        return None
    return Plan("packages.remove-leftovers", "Delete what interrupted pip runs left in site-packages",
                type(reqs[0])(tuple(paths)).steps(), _target("packages.remove-leftovers"), None,
                ["only names starting with ~ directly in a sys.path folder are deleted; pip is not involved"])


def plan_pth_edit(requests, python, torch, system) -> Plan | None:
    """Remove the .pth lines that put a shadowing folder ahead of site-packages: one FileEdit per file,
    every line of it that a finding named, through the same backup + atomic write as other edits."""
    from envdoctor.pth_edit import PthEditError, without_lines
    by_file: dict[str, dict[int, str]] = {}
    for req in coerce("packages.pth-edit", requests):
        by_file.setdefault(req.file, {})[int(req.line)] = req.text
    edits, notes = [], []
    for path, lines in sorted(by_file.items()):
        try:
            old, new, diff = without_lines(system, path, lines)
        except PthEditError as exc:
            notes.append(f"not changed: {exc}")
            continue
        edits.append(FileEdit(path, old, new, diff))
    if not edits and not notes:
        return None
    return Plan("packages.pth-edit", "Remove the .pth lines that shadow site-packages", [],
                _target("packages.pth-edit") if edits else [], edits=edits,
                notes=notes + (["the old file is kept as a timestamped backup; pip is not involved"] if edits else []))


FIXES: dict[str, Fix] = {f.id: f for f in (
    Fix("packages.install-missing", "install missing requirements", ("packages.requirements",),
        plan_install_missing),
    Fix("packages.align-companions", "align torchvision/torchaudio/torchao with torch",
        ("packages.companions", "binaries.extensions"), plan_align_companions),
    Fix("torch.reinstall", "reinstall torch for the GPU and driver", ("gpu.torch", "gpu.arch", "gpu.driver_cuda"),
        plan_torch_reinstall),
    Fix("flash-attn.rebuild", "replace or rebuild flash-attn", ("binaries.extensions", "binaries.flash_attn"),
        plan_flash_attn),
    Fix("packages.pure-wheel", "install a release's pure-Python wheel instead of its CUDA build",
        ("binaries.extensions", "packages.companions"), plan_pure_wheel),
    Fix("packages.install-newer", "install the first release that works on this machine",
        ("binaries.extensions",), plan_upgrade),
    Fix("wsl.memory", "set memory/processors/swap in .wslconfig", ("wsl.config",), plan_wsl_memory),
    Fix("packages.remove-leftovers", "delete ~leftovers of interrupted pip runs",
        ("packages.metadata", "packages.duplicates"), plan_remove_leftovers),
    Fix("packages.pth-edit", "remove .pth lines that put a folder ahead of site-packages",
        ("packages.duplicates", "packages.requirements"), plan_pth_edit),
)}
