"""GPU facts: NVML first, `nvidia-smi` (with a timeout) when NVML cannot load. Never judges."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from envdoctor import tables
from envdoctor.context import Context
from envdoctor.facts.host import wsl_version
from envdoctor.system import NvmlUnavailable, System

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


def _int(s: str) -> int | None:
    s = s.strip()
    return int(float(s)) if s.replace(".", "", 1).isdigit() else None


def parse_smi_csv(text: str) -> tuple[str | None, list[Gpu]]:
    driver, gpus = None, []
    for line in text.strip().splitlines():
        cols = [c.strip() for c in line.split(",")]
        if len(cols) < 9 or not cols[0].isdigit():
            continue
        cc = tuple(int(x) for x in cols[3].split(".")) if cols[3].replace(".", "").isdigit() else None
        mem = [(_int(c) * MiB if _int(c) is not None else None) for c in cols[4:7]]
        gpus.append(Gpu(int(cols[0]), cols[1], cc, *mem, uuid=cols[2],
                        mig=None if cols[7] in ("[N/A]", "N/A") else cols[7].lower() == "enabled"))
        driver = cols[8]
    return driver, gpus


def smi_candidates(system: System, wsl: bool) -> list[str]:
    found = []
    if wsl and system.exists("/usr/lib/wsl/lib/nvidia-smi"):
        found.append("/usr/lib/wsl/lib/nvidia-smi")  # the Windows driver's own; a distro one may shadow it
    which = system.which("nvidia-smi")
    if which and which not in found:
        found.append(which)
    return found


def probe_gpu(system: System, ctx: Context) -> GpuFacts:
    attempts = []
    try:
        return _from_nvml(system, system.nvml())
    except NvmlUnavailable as exc:
        attempts.append(str(exc))
    wsl = wsl_version((system.read_text("/proc/sys/kernel/osrelease") or ""), system.read_text("/proc/version")) == 2
    candidates = smi_candidates(system, wsl)
    if not candidates:
        attempts.append("nvidia-smi: not found")
    for smi in candidates:
        res = system.run([smi, f"--query-gpu={SMI_QUERY}", "--format=csv,noheader,nounits"], timeout=SMI_TIMEOUT)
        if res.timed_out:
            attempts.append(f"{smi} did not answer within {SMI_TIMEOUT:g} s")
            return GpuFacts(None, attempts=attempts, hung=True)
        if not res.ok:
            last = ((res.stdout + res.stderr).strip().splitlines() or [""])[-1]
            attempts.append(f"{res.describe()}" + (f": {last}" if last else ""))
            continue
        driver, gpus = parse_smi_csv(res.stdout)
        if gpus:
            return GpuFacts("nvidia-smi", driver, cuda_of_driver(driver), gpus, attempts)
        attempts.append(f"{smi}: no GPUs listed")
    return GpuFacts(None, attempts=attempts)
