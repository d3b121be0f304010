"""Plans: what a fix will run, with which parameters, and which checks it must turn green.

A planner turns the params of every failing finding that names its fix id into steps. Each step runs
one script from fixes/ with environment variables and arguments; nothing else is executed.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Callable

from envdoctor.facts.python_env import PythonEnv
from envdoctor.facts.torch_build import TorchFacts
from envdoctor.flashattn_wheel import FA_WHEEL_URL, flash_attn_wheel_url
from envdoctor.pins import index_url


@dataclass
class Step:
    description: str
    script: str                      # a file in fixes/
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    timeout: float = 1800.0

    def shell(self, script_path: str, env: dict[str, str]) -> str:
        """The exact call, as a shell line a user could run."""
        assigned = " ".join(f"{k}={shlex.quote(v)}" for k, v in {**env, **self.env}.items())
        return " ".join(filter(None, (assigned, "bash", shlex.quote(script_path),
                                      " ".join(shlex.quote(a) for a in self.args))))


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


def _specs(params: list[dict]) -> list[str]:
    seen: list[str] = []
    for p in params:
        for s in p.get("specs", []):
            if s not in seen:
                seen.append(s)
    return seen


def _pin(python: PythonEnv, torch: TorchFacts | None) -> str | None:
    dist = python.get("torch")
    version = (torch.version if torch and torch.installed else None) or (dist.version if dist else None)
    return f"torch=={version}" if version else None


def plan_install_missing(params, python, torch, system) -> Plan | None:
    specs = _specs(params)
    if not specs:
        return None
    pin = _pin(python, torch)
    # One pip call each: a failure names its package, and the ones before it are rolled back.
    steps = [Step(f"install {s}", "pip-install.sh", [s]) for s in specs]
    return Plan("packages.install-missing", "Install missing and conflicting requirements", steps,
                list(FIXES["packages.install-missing"].targets), pin,
                [f"torch stays {pin.split('==')[1]} (constraints file)"] if pin else [])


def plan_align_companions(params, python, torch, system) -> Plan | None:
    steps = []
    for p in params:
        for spec in p.get("specs", []):
            url = index_url(p.get("index_tag"))
            args = (["--force-reinstall", "--no-deps"] if p.get("reinstall") else []) + [spec]
            args += ["--index-url", url] if url else []
            desc = f"install {spec}" + (f" from {url}" if url else "")
            if all(s.description != desc for s in steps):
                steps.append(Step(desc, "pip-install.sh", args))
    if not steps:
        return None
    pin = _pin(python, torch)
    return Plan("packages.align-companions", "Install the torchvision/torchaudio/torchao built for this torch",
                steps, list(FIXES["packages.align-companions"].targets), pin,
                ["--no-deps and a constraints file: torch itself is not touched"])


def plan_torch_reinstall(params, python, torch, system) -> Plan | None:
    if not params:
        return None
    p = params[0]
    return Plan("torch.reinstall", "Install the PyTorch build for these GPUs and this driver",
                [Step(f"install {' '.join(p['specs'])} from {p['index_url']}", "pip-install.sh",
                      list(p["specs"]) + ["--index-url", p["index_url"]], timeout=3600.0)],
                list(FIXES["torch.reinstall"].targets), None,
                ["this fix exists to change torch: no constraints file",
                 "packages built against the old torch (flash-attn) may need rebuilding afterwards"])


def plan_flash_attn(params, python, torch, system) -> Plan | None:
    """One step: the script with every parameter as a variable. The finding prints this same call
    (`checks.binaries.flash_attn_remedy` builds it from this plan), so what a user copies is the fix."""
    if not params:
        return None
    p = params[0]
    pattern = system.env.get("ENVDOCTOR_FLASH_ATTN_WHEEL_URL") if system is not None else None
    url = flash_attn_wheel_url(p["version"], torch, python, pattern) if pattern else p["wheel_url"]
    pin = p.get("torch_pin") or _pin(python, torch)
    step_env = {"FA_VERSION": p["version"], "FA_WHEEL_URL": url, "MAX_JOBS": str(p["max_jobs"]),
                "NVCC_THREADS": str(p["nvcc_threads"]), "FLASH_ATTN_CUDA_ARCHS": p["archs"],
                "TORCH_PIN": pin or ""}
    return Plan("flash-attn.rebuild", "Replace flash-attn with a build for this torch",
                [Step(f"flash-attn {p['version']}: prebuilt wheel if one matches, else a source build",
                      "flash-attn.sh", [], step_env, timeout=4 * 3600.0)],
                list(FIXES["flash-attn.rebuild"].targets), None,
                [f"wheel tried first: {url}" + (" (FA pattern from ENVDOCTOR_FLASH_ATTN_WHEEL_URL)" if pattern
                                                  else f" (pattern {FA_WHEEL_URL.split('/download/')[0]}/…)"),
                 f"source build: MAX_JOBS={p['max_jobs']} NVCC_THREADS={p['nvcc_threads']} "
                 f"FLASH_ATTN_CUDA_ARCHS={p['archs'] or '(flash-attn default)'} --no-build-isolation",
                 f"torch stays {pin} (the script writes it to a constraints file)"])


def plan_pure_wheel(params, python, torch, system) -> Plan | None:
    """A release's pure-Python wheel in place of its CUDA platform wheel (torchao beside a CPU torch)."""
    specs = _specs(params)
    if not specs:
        return None
    return Plan("packages.pure-wheel", "Replace CUDA builds with the release's pure-Python wheel",
                [Step(f"install the py3-none-any wheel of {' '.join(specs)}", "pure-wheel.sh", specs)],
                list(FIXES["packages.pure-wheel"].targets), None,
                ["--no-deps: torch is not touched (no constraints file needed); the finding prints this same call"])


def plan_upgrade(params, python, torch, system) -> Plan | None:
    """A newer release in place of one that cannot work here (bitsandbytes < 0.46 on a CPU-only box)."""
    specs = _specs(params)
    if not specs:
        return None
    pin = _pin(python, torch)
    return Plan("packages.install-newer", "Install the first release that works on this machine",
                [Step(f"install {s}", "pip-install.sh", [s]) for s in specs],
                list(FIXES["packages.install-newer"].targets), pin,
                [f"torch stays {pin.split('==')[1]} (constraints file)"] if pin else [])


def step_command(step: Step, python: PythonEnv) -> str:
    """A step as the copyable shell line a finding prints: the same script, the same variables."""
    from envdoctor.assets import asset
    return step.shell(str(asset("fixes", step.script)), {"PYTHON": python.executable})


def plan_wsl_memory(params, python, torch, system) -> Plan | None:
    """The same editor as `envdoctor wslconfig set`: only the values change, read back as WSL reads them."""
    from envdoctor.wslconfig_edit import EditError, plan_file
    if not params:
        return None
    p = params[0]
    try:
        fp = plan_file(system, p["path"], p["values"])
    except EditError as exc:
        values = ", ".join(f"{k}={v}" for k, v in p["values"].items())
        return Plan("wsl.memory", "Give the WSL VM enough memory (.wslconfig)", [], [],
                    notes=[f"not changed: {exc}", f"or set {values} in [wsl2] by hand"])
    if not fp.changed:
        return None
    return Plan("wsl.memory", "Give the WSL VM enough memory (.wslconfig)", [], ["wsl.config"],
                edits=[FileEdit(fp.path, fp.old, fp.new, fp.diff)],
                notes=fp.notes + ["only the values change: every other byte (spacing, comments, encoding, line "
                                  "endings) stays; the old file is kept as a timestamped backup"],
                afterwards=["In Windows (PowerShell or cmd): wsl --shutdown", "Wait ~8 seconds, then reopen the "
                            "distro: the VM starts with the new memory (or pass --restart-wsl to do this now)"])


def plan_remove_leftovers(params, python, torch, system) -> Plan | None:
    paths = [p for params_ in params for p in params_.get("paths", [])]
    if not paths:
        return None
    return Plan("packages.remove-leftovers", "Delete what interrupted pip runs left in site-packages",
                [Step(f"delete {len(paths)} leftover(s): " + ", ".join(p.rsplit("/", 1)[-1] for p in paths),
                      "remove-leftovers.sh", paths, timeout=600.0)],
                list(FIXES["packages.remove-leftovers"].targets), None,
                ["only names starting with ~ directly in a sys.path folder are deleted; pip is not involved"])


def plan_pth_edit(params, python, torch, system) -> Plan | None:
    """Remove the .pth lines that put a shadowing folder ahead of site-packages: one FileEdit per file,
    every line of it that a finding named, through the same backup + atomic write as other edits."""
    from envdoctor.pth_edit import PthEditError, without_lines
    by_file: dict[str, dict[int, str]] = {}
    for p in params:
        by_file.setdefault(p["file"], {})[int(p["line"])] = p["text"]
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
                ["packages.duplicates", "packages.requirements"] if edits else [], edits=edits,
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
