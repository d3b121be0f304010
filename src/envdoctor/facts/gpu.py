"""GPU facts: NVML first, `nvidia-smi` (with a timeout) when NVML cannot load. Never judges."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from envdoctor import tables
from envdoctor.context import Context
from envdoctor.facts.host import wsl_version
from envdoctor.system import NvmlUnavailable, System, signal_name

SMI_QUERY = "index,name,uuid,compute_cap,memory.total,memory.free,memory.used,mig.mode.current,driver_version"
SMI_TIMEOUT = 10.0
MiB = 1024 ** 2
# Compute processes started by envdoctor's own smoke tests carry this argument (not "another process").
SMOKE_MARK = "--envdoctor-smoke"


@dataclass
class Gpu:
    index: int
    name: str
    cc: tuple[int, int] | None
    mem_total: int | None
    mem_free: int | None
    mem_used: int | None
    uuid: str = ""
    mig: bool | None = None
    processes: list[dict] = field(default_factory=list)  # {pid, used, name}

    @property
    def sm(self) -> str | None:
        return f"sm_{self.cc[0]}{self.cc[1]}" if self.cc else None


@dataclass
class GpuFacts:
    source: str | None                 # "nvml", "nvidia-smi", or None: no GPU facts
    driver: str | None = None
    cuda_driver: tuple[int, int] | None = None  # the newest CUDA this driver runs
    gpus: list[Gpu] = field(default_factory=list)
    attempts: list[str] = field(default_factory=list)  # why NVML / nvidia-smi gave nothing
    hung: bool = False                 # nvidia-smi timed out: the driver may be wedged
    unreadable: list[str] = field(default_factory=list)  # lines of nvidia-smi output that were not a GPU row
    signals: list[str] = field(default_factory=list)     # what the platform shows of an NVIDIA GPU (gpu_presence)
    tool_failed: str | None = None     # "nvidia-smi: killed by signal 11 (SIGSEGV)", "…: exit code 9: …"

    @property
    def present(self) -> bool:
        return bool(self.gpus)

    def to_dict(self) -> dict:
        return asdict(self)


def cuda_of_driver(driver: str | None) -> tuple[int, int] | None:
    """The newest CUDA a Linux driver runs, from the toolkit's bundled-driver table."""
    from envdoctor.deps import parse_version
    dv = parse_version(driver)
    if dv is None:
        return None
    best = None
    for cuda, mins in tables.load("cuda")["driver_min"].items():
        need = parse_version(mins["linux"])
        if need is not None and dv >= need:
            cv = tuple(int(x) for x in cuda.split("."))
            best = max(best or cv, cv)
    return best


def _process_names(system: System, procs: list[dict]) -> list[dict]:
    out = []
    for p in procs:
        cmdline = (system.read_text(f"/proc/{p['pid']}/cmdline") or "").replace("\0", " ").strip()
        if SMOKE_MARK in cmdline:
            continue
        name = (system.read_text(f"/proc/{p['pid']}/comm") or "").strip() or cmdline[:60] or "?"
        out.append({**p, "name": name})
    return out


def _from_nvml(system: System, raw: dict) -> GpuFacts:
    v = raw["cuda_driver"]
    gpus = [Gpu(index=g["index"], name=g["name"], cc=tuple(g["cc"]), mem_total=g["mem_total"],
                mem_free=g["mem_free"], mem_used=g["mem_used"], uuid=g["uuid"], mig=g["mig"],
                processes=_process_names(system, g["processes"])) for g in raw["gpus"]]
    return GpuFacts("nvml", raw["driver"], (v // 1000, (v % 1000) // 10), gpus)


SMI_FIELDS = SMI_QUERY.split(",")
_CC = re.compile(r"^(\d+)\.(\d+)$", re.ASCII)
_DRIVER = re.compile(r"^\d+\.\d+(\.\d+)*$", re.ASCII)
_NA = ("[N/A]", "N/A", "[Not Supported]")


def _mib(s: str) -> int | None:
    """A memory column in MiB; ValueError when it is neither a number nor N/A."""
    if s in _NA:
        return None
    if not s.isdigit():
        raise ValueError(f"memory: expected MiB as a whole number, got {s!r}")
    return int(s) * MiB


def _row(cols: list[str]) -> tuple[str, Gpu]:
    """(driver, GPU) of one CSV row; ValueError naming the field that is not what nvidia-smi prints."""
    if len(cols) != len(SMI_FIELDS):
        raise ValueError(f"expected {len(SMI_FIELDS)} comma-separated fields ({SMI_QUERY}), got {len(cols)}")
    index, name, uuid, cc_s, *mem, mig_s, driver = cols
    if not index.isdigit():
        raise ValueError(f"index: expected a number, got {index!r}")
    if not name:
        raise ValueError("name: empty")
    cc_m = _CC.match(cc_s)
    if cc_m is None and cc_s not in _NA:
        raise ValueError(f"compute_cap: expected MAJOR.MINOR like 8.9, got {cc_s!r}")
    if mig_s.lower() not in ("enabled", "disabled") and mig_s not in _NA:
        raise ValueError(f"mig.mode.current: expected Enabled, Disabled or [N/A], got {mig_s!r}")
    if not _DRIVER.match(driver):
        raise ValueError(f"driver_version: expected a version like 560.35.03, got {driver!r}")
    cc = (int(cc_m[1]), int(cc_m[2])) if cc_m else None
    total, free, used = (_mib(c) for c in mem)
    return driver, Gpu(int(index), name, cc, total, free, used, uuid=uuid,
                       mig=None if mig_s in _NA else mig_s.lower() == "enabled")


def parse_smi_csv(text: str) -> tuple[str | None, list[Gpu], list[str]]:
    """(driver, GPUs, unreadable lines) of `nvidia-smi --query-gpu=SMI_QUERY --format=csv,noheader,nounits`.
    A line that is not a whole GPU row (cut short, garbage, another driver) is reported, never guessed at."""
    driver, gpus, bad = None, [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            d, gpu = _row([c.strip() for c in line.split(",")])
            if driver is not None and d != driver:
                raise ValueError(f"driver_version {d} differs from {driver} on an earlier line")
        except ValueError as exc:
            bad.append(f"line {n}: {exc}: {line.strip()[:120]!r}")
            continue
        driver = d
        gpus.append(gpu)
    return driver, gpus, bad


def smi_candidates(system: System, wsl: bool) -> list[str]:
    found = []
    if wsl and system.exists("/usr/lib/wsl/lib/nvidia-smi"):
        found.append("/usr/lib/wsl/lib/nvidia-smi")  # the Windows driver's own; a distro one may shadow it
    which = system.which("nvidia-smi")
    if which and which not in found:
        found.append(which)
    return found


def probe_gpu(system: System, ctx: Context) -> GpuFacts:
    facts = _probe(system)
    if not facts.present or facts.unreadable or facts.tool_failed:
        from envdoctor.facts.gpu_presence import gpu_presence, unusable_gpus
        facts.signals = gpu_presence(system)
        if not facts.present:
            facts.attempts += unusable_gpus(system)
    return facts


def _probe(system: System) -> GpuFacts:
    attempts: list[str] = []
    try:
        return _from_nvml(system, system.nvml())
    except NvmlUnavailable as exc:
        attempts.append(str(exc))
    wsl = wsl_version((system.read_text("/proc/sys/kernel/osrelease") or ""), system.read_text("/proc/version")) == 2
    candidates = smi_candidates(system, wsl)
    if not candidates:
        attempts.append("nvidia-smi: not found")
    tool_failed = None
    for smi in candidates:
        res = system.run([smi, f"--query-gpu={SMI_QUERY}", "--format=csv,noheader,nounits"], timeout=SMI_TIMEOUT)
        if res.timed_out:
            attempts.append(f"{smi} did not answer within {SMI_TIMEOUT:g} s")
            return GpuFacts(None, attempts=attempts, hung=True)
        if not res.ok:
            last = ((res.stdout + res.stderr).strip().splitlines() or [""])[-1]
            attempts.append(f"{res.describe()}" + (f": {last[:200]}" if last else ""))
            if res.returncode is not None and res.returncode < 0:
                failed = f"{smi}: killed by signal {-res.returncode}{signal_name(-res.returncode)}"
            else:
                failed = f"{smi}: {res.describe().split(': ', 1)[-1]}" + (f": {last[:200]}" if last else "")
            tool_failed = tool_failed or failed
            continue
        driver, gpus, bad = parse_smi_csv(res.stdout)
        unreadable = [f"{smi}: {b}" for b in bad]
        if gpus:
            return GpuFacts("nvidia-smi", driver, cuda_of_driver(driver), gpus, attempts, unreadable=unreadable)
        attempts.append(f"{smi}: no GPUs listed" + (f" ({len(bad)} unreadable line(s))" if bad else ""))
        if bad:
            return GpuFacts(None, attempts=attempts, unreadable=unreadable, tool_failed=tool_failed)
    return GpuFacts(None, attempts=attempts, tool_failed=tool_failed)
