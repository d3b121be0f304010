"""Host facts: OS, distro, kernel, RAM/swap (with cgroup limits), CPUs, free disk."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from envdoctor.context import Context
from envdoctor.system import System

GiB = 1024 ** 3


@dataclass
class Disk:
    role: str          # "working directory", "Hugging Face cache"
    path: str          # where the data goes (may not exist yet)
    measured_at: str   # nearest existing folder, where free space was measured
    total: int | None
    free: int | None
    device: int | None


@dataclass
class HostFacts:
    system: str                    # Linux, Darwin, Windows
    kernel: str
    machine: str
    distro: str | None
    distro_id: str | None
    distro_version: str | None
    wsl: int | None                # 1 or 2 when running under WSL
    mem_total: int | None
    mem_available: int | None
    mem_limit: int | None          # cgroup memory limit, when lower than the RAM
    swap_total: int | None
    swap_free: int | None
    cpus_online: int | None
    cpus_usable: int | None        # after affinity and cgroup quota
    cpu_quota: float | None
    disks: list[Disk] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_os_release(text: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition("=")
        if sep and key and not key.startswith("#"):
            out[key.strip()] = value.strip().strip('"').strip("'")
    return out


def parse_meminfo(text: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    return out


def cgroup_memory_limit(system: System) -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        text = (system.read_text(path) or "").strip()
        if text.isdigit() and int(text) < 2 ** 60:  # v1 reports "no limit" as a huge number
            return int(text)
    return None


def cgroup_cpu_quota(system: System) -> float | None:
    text = (system.read_text("/sys/fs/cgroup/cpu.max") or "").split()
    if len(text) == 2 and text[0].isdigit() and text[1].isdigit() and int(text[1]) > 0:
        return int(text[0]) / int(text[1])
    quota = (system.read_text("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") or "").strip()
    period = (system.read_text("/sys/fs/cgroup/cpu/cpu.cfs_period_us") or "").strip()
    if quota.isdigit() and period.isdigit() and int(period) > 0:
        return int(quota) / int(period)
    return None


def hf_cache_dir(env) -> str:
    """Where huggingface_hub puts downloads (HF_HUB_CACHE > HF_HOME/hub > XDG_CACHE_HOME > ~/.cache)."""
    if env.get("HF_HUB_CACHE"):
        return env["HF_HUB_CACHE"]
    if env.get("HF_HOME"):
        return env["HF_HOME"].rstrip("/") + "/hub"
    cache = env.get("XDG_CACHE_HOME") or (env.get("HOME", "~").rstrip("/") + "/.cache")
    return cache + "/huggingface/hub"


def measure_disk(system: System, role: str, path: str) -> Disk:
    probe = path
    while probe and not system.is_dir(probe) and probe not in ("/", "."):
        probe = probe.rsplit("/", 1)[0] or "/"
    usage = system.disk_usage(probe)
    return Disk(role, path, probe, usage.total if usage else None, usage.free if usage else None,
                system.device_id(probe))


def wsl_version(kernel: str, proc_version: str | None) -> int | None:
    text = f"{kernel} {proc_version or ''}".lower()
    if "microsoft" not in text:
        return None
    return 2 if ("wsl2" in text or "microsoft-standard" in text) else 1


def probe_host(system: System, ctx: Context) -> HostFacts:
    plat = system.platform()
    osr = parse_os_release(system.read_text("/etc/os-release") or system.read_text("/usr/lib/os-release"))
    kernel = (system.read_text("/proc/sys/kernel/osrelease") or plat["release"] or "").strip()
    mem = parse_meminfo(system.read_text("/proc/meminfo"))
    if mem:
        total, avail = mem.get("MemTotal"), mem.get("MemAvailable", mem.get("MemFree"))
        swap_total, swap_free = mem.get("SwapTotal"), mem.get("SwapFree")
    else:
        fb = system.memory_fallback() or {}
        total, avail, swap_total, swap_free = (fb.get("total"), fb.get("available"),
                                               fb.get("swap_total"), fb.get("swap_free"))
    limit = cgroup_memory_limit(system)
    if limit is not None and total is not None and limit >= total:
        limit = None
    online, affinity, quota = system.cpu_count(), system.cpu_affinity(), cgroup_cpu_quota(system)
    known = [n for n in (online, affinity) if n]
    usable = min(known) if known else None
    if quota and usable:
        usable = max(1, min(usable, int(quota)))  # a 2.5-CPU quota runs 2 busy jobs without throttling
    disks = [measure_disk(system, "working directory", system.cwd),
             measure_disk(system, "Hugging Face cache", hf_cache_dir(system.env))]
    return HostFacts(
        system=plat["system"], kernel=kernel, machine=plat["machine"],
        distro=osr.get("PRETTY_NAME"), distro_id=osr.get("ID"), distro_version=osr.get("VERSION_ID"),
        wsl=wsl_version(kernel, system.read_text("/proc/version")),
        mem_total=total, mem_available=avail, mem_limit=limit, swap_total=swap_total, swap_free=swap_free,
        cpus_online=online, cpus_usable=usable, cpu_quota=quota, disks=disks,
    )
