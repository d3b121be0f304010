"""Remedies for packages beside a CPU-only torch: a CUDA build of a companion, flash-attn, and a
bitsandbytes too old to do 4-bit on the CPU. None of them reinstalls the build it calls broken."""

from __future__ import annotations

from packaging.version import InvalidVersion, Version

from envdoctor import tables
from envdoctor.facts.python_env import PythonEnv
from envdoctor.facts.torch_build import TorchFacts
from envdoctor.model import Item, Remedy, Status

# The first bitsandbytes whose CPU backend quantizes to 4 bit. Verified on torch 2.13.0+cpu (x86-64):
# 0.42.0 and 0.45.5 raise NotImplementedError in quantize_4bit ("Device type not supported for FP4
# quantization: cpu") and Linear4bit's forward fails `assert quant_state is not None`; 0.46.0 runs both.
BNB_CPU_4BIT = "0.46.0"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def torch_is_cpu_only(torch: TorchFacts) -> bool:
    return bool(torch.installed and not torch.cuda and not torch.hip)


def torchao_for(torch_version: str) -> str | None:
    """The newest torchao release envdoctor's table says is built for this torch."""
    try:
        release = Version(torch_version).release
    except InvalidVersion:
        return None
    table = tables.load("companions")["torchao"]
    fits = [v for v, row in table.items() if not v.startswith("_")
            and (release[:3] >= Version(row["torch_min"]).release if "torch_min" in row
                 else any(release[:3] == Version(t).release for t in row["torch"]))]
    return fits[-1] if fits else None


def pure_wheel_remedy(python: PythonEnv, name: str, version: str) -> Remedy:
    """The release's py3-none-any wheel: pure Python, nothing linking CUDA. The printed command is the
    request's own step, the one `envdoctor fix packages.pure-wheel` runs (one source)."""
    from envdoctor.repair.requests import PureWheel, pip_line, remedy
    cpu_route = pip_line(python.executable, [f"{name}=={version}"], options=["--force-reinstall", "--no-deps"],
                         index_url=TORCH_CPU_INDEX)
    return remedy(PureWheel((f"{name}=={version}",)), python,
                  f"PyPI's {name} platform wheels are CUDA builds, so this installs {name} {version}'s pure-Python "
                  f"wheel from PyPI (py3-none-any: no compiled parts, nothing that links CUDA). PyTorch's own CPU "
                  f"index publishes CPU builds too, but is not reachable from every machine (not from the one "
                  f"this remedy was tested on); where it is: {cpu_route}")


def cuda_build_remedy(python: PythonEnv, name: str, version: str | None, torch: TorchFacts) -> Remedy:
    """A CUDA build of a package beside a CPU-only torch: never reinstall it (the same CUDA build)."""
    from envdoctor.repair.requests import pip_line, pip_remedy
    if name.lower() == "torchao":
        want = torchao_for(torch.version or "")
        if want:
            return pure_wheel_remedy(python, "torchao", want)
    return pip_remedy(python, pip_line(python.executable, [name], options=["-y"], verb="uninstall"),
                  f"No CPU build of {name} exists for torch {torch.version} (its wheels link CUDA), so no "
                  f"automatic fix: uninstall it (command above), or install the CUDA build of torch on a machine "
                  f"with an NVIDIA GPU and keep {name}.")


def flash_attn_needs_cuda(torch: TorchFacts) -> Remedy:
    return Remedy(None, f"flash-attn needs a CUDA build of torch: torch {torch.version} is CPU-only, so it "
                        "cannot be rebuilt here (its build stops at 'CUDA_HOME environment variable is not set') "
                        "and no automatic fix exists. Install the CUDA torch first (on a machine with an NVIDIA "
                        "GPU: `envdoctor fix torch.reinstall`), then `envdoctor fix flash-attn.rebuild`; on a "
                        "CPU-only machine, uninstall it: pip uninstall -y flash-attn.")


def bnb_cpu_item(python: PythonEnv, torch: TorchFacts) -> Item | None:
    """bitsandbytes before 0.46 on a machine without CUDA: it loads libbitsandbytes_cpu.so, which has
    no 4-bit quantization; its CUDA libraries are never loaded here, so they are not the cause."""
    bnb = python.get("bitsandbytes")
    if bnb is None or not torch_is_cpu_only(torch):
        return None
    try:
        if Version(bnb.version).release >= Version(BNB_CPU_4BIT).release:
            return None
    except InvalidVersion:
        return None
    from envdoctor.repair.requests import InstallNewer, remedy
    spec = f"bitsandbytes>={BNB_CPU_4BIT}"
    return Item(Status.FAIL, f"bitsandbytes {bnb.version} has no 4-bit support on the CPU: without CUDA it loads "
                             f"libbitsandbytes_cpu.so, which cannot quantize to 4 bit",
                ("Linear4bit's forward fails `assert quant_state is not None`; bitsandbytes.functional."
                 "quantize_4bit raises NotImplementedError (device type cpu).",
                 f"4-bit on the CPU arrived in bitsandbytes {BNB_CPU_4BIT}; its CUDA libraries are not loaded on "
                 "this machine and are not the problem."),
                remedy(InstallNewer((spec,), f"torch=={torch.version}" if torch.version else None), python,
                       f"Install bitsandbytes {BNB_CPU_4BIT} or newer (the first release with 4-bit on the CPU)."))
