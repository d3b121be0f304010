"""WSL2 checks: the VM's memory against the work, .wslconfig, and the CUDA-on-WSL plumbing.
Off WSL they skip quietly."""

from __future__ import annotations

from envdoctor.buildjobs import JOB_GIB
from envdoctor.facts.host import GiB, HostFacts
from envdoctor.facts.python_env import PythonEnv
from envdoctor.facts.wsl import WslFacts
from envdoctor.model import Remedy, Result, fail, ok, skip, warn
from envdoctor.registry import check

MERGE_GIB = 20          # an 8B model in bf16 (16 GB) plus the process around it, to load and merge
BUILD_JOBS = 4          # flash-attn's README: MAX_JOBS=4 on machines under 96 GB
RESTART = "then in Windows: wsl --shutdown, wait ~8 s, reopen the distro"


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / GiB:.0f} GiB"


@check("wsl.version", "WSL", "WSL", "WSL1 or WSL2, interop, the Windows profile folder", needs=("wsl",),
       applies=("wsl",))
def version(wsl: WslFacts) -> Result:
    if wsl.version == 1:
        return fail("WSL1: no GPU access", ["CUDA works only in WSL2 distributions."],
                    Remedy("wsl --set-version <distro> 2", "Convert the distribution to WSL2 (run in Windows)."))
    where = f"Windows profile {wsl.profile} (via {wsl.profile_from})" if wsl.profile else "Windows profile not found"
    host = (f"Windows has {_gib(wsl.host_ram)} RAM, {wsl.host_cpus} CPUs" if wsl.host_ram else wsl.host_from)
    return ok(f"WSL2, interop {'on' if wsl.interop else 'off'}", [where, host or ""])


@check("wsl.config", ".wslconfig", "WSL", "the .wslconfig WSL reads: found, well-formed, effective values",
       needs=("wsl",), applies=("wsl2",))
def config(wsl: WslFacts) -> Result:
    if not wsl.profile:
        return warn("cannot find the Windows profile folder, so not .wslconfig either",
                    [wsl.host_from or "", "tried wslvar, cmd.exe through interop, and /mnt/c/Users"],
                    Remedy(text="Enable interop ([interop] enabled=true in /etc/wsl.conf) or install wslu."))
    from envdoctor.wslconfig import effective  # on WSL only: off it these checks skip
    eff = effective(wsl.config, wsl.host_ram, wsl.host_cpus)
    values = (f"VM gets memory {_gib(eff.memory)} ({eff.memory_from}), swap {_gib(eff.swap)} ({eff.swap_from}), "
              f"processors {eff.processors or 'all'}") if eff else "effective values unknown (Windows RAM unknown)"
    if wsl.config is None:
        return ok(f"no {wsl.config_path}: WSL's defaults", [values])
    cfg = wsl.config
    if cfg.unreadable:
        return fail(f"{wsl.config_path} cannot be read by WSL: it uses its defaults for everything",
                    cfg.problems + [values],
                    Remedy(text=f"Save it as UTF-8 (see docs/wslconfig.md), {RESTART}."))
    if cfg.problems:
        return fail(f"{wsl.config_path}: WSL skips or rejects {len(cfg.problems)} line(s) and uses its defaults "
                    "for those settings", cfg.problems + [values] + cfg.notes,
                    Remedy(text=f"Correct those lines (see docs/wslconfig.md), {RESTART}."))
    return ok(f"{wsl.config_path}: well-formed ({cfg.encoding})", [values] + cfg.notes)


@check("wsl.memory", "WSL VM memory", "WSL", "the VM's memory against loading/merging an 8B model and a "
       "flash-attn build (per-job peak × jobs)", needs=("wsl", "host", "python"), applies=("wsl2",))
def memory(wsl: WslFacts, host: HostFacts, python: PythonEnv) -> Result:
    vm = host.mem_total or 0
    must_build = python.get("flash-attn") is None
    need = max(MERGE_GIB, BUILD_JOBS * JOB_GIB if must_build else 0)
    why = [f"loading/merging an 8B model in bf16: ~{MERGE_GIB} GiB"] + (
        [f"building flash-attn with MAX_JOBS={BUILD_JOBS}: {BUILD_JOBS} × {JOB_GIB} GiB"] if must_build else [])
    if vm >= need * GiB * 0.95:
        return ok(f"the VM has {_gib(vm)}, enough for {need} GiB of work", why)
    remedy = Remedy(text=f"Give the VM more memory in .wslconfig, {RESTART}.")
    if wsl.host_ram and wsl.profile:
        from envdoctor.repair.requests import EditWslConfig, remedy as fix_remedy
        from envdoctor.wslconfig import recommend
        values = recommend(wsl.host_ram, wsl.host_cpus)
        if int(values["memory"][:-2]) * GiB > vm * 1.05:
            remedy = fix_remedy(EditWslConfig(wsl.config_path, tuple(values.items())), python,
                                f"Set {', '.join(f'{k}={v}' for k, v in values.items())} in {wsl.config_path}, "
                                f"{RESTART}.")
        else:
            remedy = Remedy(text=f"Windows has {_gib(wsl.host_ram)} in all: close programs, add RAM, or build "
                                 "flash-attn with fewer jobs (envdoctor fix flash-attn.rebuild picks them).")
    low = fail if vm < MERGE_GIB * GiB * 0.8 else warn
    return low(f"the VM has {_gib(vm)}; the planned work needs ~{need} GiB", why +
               ["A WSL VM out of memory freezes or kills cc1plus ('Killed signal terminated program')."], remedy)


@check("wsl.driver", "No Linux driver in WSL", "WSL", "no Linux NVIDIA driver packages inside the WSL distro",
       needs=("wsl",), applies=("wsl2",))
def driver(wsl: WslFacts) -> Result:
    if wsl.linux_driver_packages:
        pkgs = " ".join(wsl.linux_driver_packages)
        return fail(f"a Linux NVIDIA driver is installed inside WSL: {pkgs}",
                    ["WSL uses the Windows driver through /usr/lib/wsl/lib; a Linux driver's libraries shadow it "
                     "and CUDA fails."], Remedy(f"sudo apt-get purge {pkgs}", "Remove it; keep only the Windows driver."))
    return ok("no Linux NVIDIA driver packages")


@check("wsl.libcuda", "libcuda from Windows", "WSL", "libcuda.so.1 resolves to /usr/lib/wsl/lib",
       needs=("wsl",), applies=("wsl2",))
def libcuda(wsl: WslFacts) -> Result:
    if not wsl.wsl_libcuda:
        return fail("/usr/lib/wsl/lib/libcuda.so.1 is missing: the Windows NVIDIA driver is not exposed",
                    ["Install or update the NVIDIA driver on Windows (never in Linux), then wsl --update."],
                    Remedy("wsl --update", "Run in Windows after installing the NVIDIA driver there."))
    where = wsl.libcuda_resolves_to
    if where and not where.startswith("/usr/lib/wsl/"):
        return fail(f"libcuda.so.1 resolves to {where}, not the WSL one",
                    ["That library belongs to a Linux driver and cannot reach the Windows driver."],
                    Remedy(f"sudo rm {where} && sudo ldconfig", "Remove the stray libcuda (or the package that "
                           "installed it)."))
    return ok("libcuda.so.1 comes from /usr/lib/wsl/lib")


@check("wsl.nvidia_smi", "nvidia-smi", "WSL", "the nvidia-smi on PATH is the WSL one", needs=("wsl",),
       applies=("wsl2",))
def nvidia_smi(wsl: WslFacts) -> Result:
    if wsl.smi_shadow:
        return warn(f"{wsl.smi_shadow} shadows /usr/lib/wsl/lib/nvidia-smi",
                    ["A distro nvidia-smi (nvidia-utils) cannot talk to the Windows driver: 'NVIDIA-SMI has failed'."],
                    Remedy("sudo apt-get purge 'nvidia-utils-*'", "Remove it; /usr/lib/wsl/lib/nvidia-smi is the one."))
    return ok("nvidia-smi is the WSL one" if wsl.nvidia_smi else "no nvidia-smi on PATH")
