"""Host checks: OS, glibc, RAM, swap, CPUs, free disk where models and checkpoints go."""

from __future__ import annotations

from envdoctor.facts.host import GiB, HostFacts
from envdoctor.facts.python_env import PythonEnv
from envdoctor.model import Item, Remedy, Result, Status, fail, from_items, ok, skip, warn
from envdoctor.registry import check

# Llama-3.1-8B: the bf16 download is ~16 GB; merging it in bf16 holds ~16 GB in RAM; one flash-attn
# compile job peaks at 6.6–9 GB (shared DOMAIN.md). Below MIN the work cannot run; below GOOD it is tight.
RAM_MIN, RAM_GOOD = 8 * GiB, 32 * GiB
RAM_AVAILABLE_LOW = 4 * GiB
CPUS_GOOD = 4
# Free disk per role: (fail below, warn below).
DISK_NEEDS = {
    "Hugging Face cache": (16 * GiB, 40 * GiB),   # base model download (+ a second model)
    "working directory": (16 * GiB, 40 * GiB),    # merged model + checkpoints
}
GLIBC_MIN, GLIBC_GOOD = (2, 17), (2, 28)


def gib(n: int | None) -> str:
    return "?" if n is None else f"{n / GiB:.1f} GiB"


@check("system.os", "Operating system", "System", "OS, distribution, kernel and architecture",
       needs=("host",))
def os_check(host: HostFacts) -> Result:
    where = " ".join(x for x in (host.distro or host.system, f"kernel {host.kernel}", host.machine) if x)
    if host.wsl:
        where += f" (WSL{host.wsl})"
    if host.system == "Darwin":
        return fail(f"macOS ({where}): no CUDA", ["bitsandbytes QLoRA and flash-attn need an NVIDIA GPU "
                    "on Linux or WSL2."], Remedy(text="Train on a Linux or WSL2 machine with an NVIDIA GPU."))
    if host.system == "Windows":
        return warn(f"native Windows ({where})", ["flash-attn and the axolotl stack are built for Linux; "
                    "native Windows wheels are missing or unofficial."],
                    Remedy("wsl --install -d Ubuntu-24.04", "Train inside WSL2."))
    if host.system != "Linux":
        return warn(f"untested OS: {where}")
    return ok(where)


def parse_glibc(text: str | None) -> tuple[int, int] | None:
    try:
        major, minor = text.split()[-1].split(".")[:2]
        return int(major), int(minor)
    except (AttributeError, ValueError, IndexError):
        return None


@check("system.glibc", "C library", "System",
       "glibc version of the target interpreter against manylinux wheel needs", needs=("python",))
def glibc(python: PythonEnv) -> Result:
    if not python.glibc:
        return skip("not a glibc system")
    v = parse_glibc(python.glibc)
    if v is None:
        return warn(f"unrecognized C library version {python.glibc!r}")
    text = f"glibc {v[0]}.{v[1]}"
    if v < GLIBC_MIN:
        return fail(f"{text}: too old for any PyTorch wheel (manylinux2014 needs 2.17)",
                    remedy=Remedy(text="Use a newer distribution (Ubuntu 22.04+, Debian 12+)."))
    if v < GLIBC_GOOD:
        return warn(f"{text}: current PyTorch and flash-attn wheels are manylinux_2_28 (glibc ≥ 2.28)",
                    ["pip will fall back to old releases or source builds."],
                    Remedy(text="Use a newer distribution (Ubuntu 20.04+, Debian 10+, RHEL 8+)."))
    return ok(text)


@check("system.memory", "Memory", "System", "RAM (and any cgroup limit) against model loading, merging "
       "and compiling", needs=("host",))
def memory(host: HostFacts) -> Result:
    if host.mem_total is None:
        return skip("RAM size unknown")
    usable = min(host.mem_total, host.mem_limit or host.mem_total)
    desc = f"{gib(usable)} RAM" + (f" (container limit; machine has {gib(host.mem_total)})" if host.mem_limit else "")
    desc += f", {gib(host.mem_available)} available"
    fix = Remedy(text="Use a machine with 32 GiB or more" + (", or raise the WSL VM's memory in .wslconfig"
                      if host.wsl else "") + ".", fix_id="wsl.memory" if host.wsl == 2 else None)
    why = ["Merging an 8B adapter in bf16 holds ~16 GB; one flash-attn compile job peaks at 6–9 GB."]
    if usable < RAM_MIN:
        return fail(desc + ": too little for an 8B model", why, fix)
    if usable < RAM_GOOD:
        return warn(desc + ": tight for an 8B model", why, fix)
    if host.mem_available is not None and host.mem_available < RAM_AVAILABLE_LOW:
        return warn(desc + ": most of it is in use", ["Other processes hold the memory a run needs."],
                    Remedy("ps aux --sort=-rss | head", "Find and stop what holds the memory."))
    return ok(desc)


@check("system.swap", "Swap", "System", "swap space as a cushion against OOM kills", needs=("host",))
def swap(host: HostFacts) -> Result:
    if host.swap_total is None:
        return skip("swap size unknown")
    if host.swap_total == 0:
        return warn("no swap", ["A memory spike (flash-attn compile, model merge) is OOM-killed at once "
                                "instead of slowing down."],
                    Remedy("sudo fallocate -l 16G /swapfile && sudo chmod 600 /swapfile && sudo mkswap "
                           "/swapfile && sudo swapon /swapfile" if not host.wsl else None,
                           "Add swap" + (" with swap=… in .wslconfig" if host.wsl else "") + "."))
    return ok(f"{gib(host.swap_total)} swap, {gib(host.swap_free)} free")


@check("system.cpu", "CPUs", "System", "CPUs usable by this process (affinity, cgroup quota)",
       needs=("host",))
def cpu(host: HostFacts) -> Result:
    if host.cpus_usable is None:
        return skip("CPU count unknown")
    desc = f"{host.cpus_usable} usable CPUs"
    if host.cpus_online and host.cpus_online != host.cpus_usable:
        desc += f" of {host.cpus_online}" + (f" (cgroup quota {host.cpu_quota:g})" if host.cpu_quota else "")
    if host.cpus_usable < CPUS_GOOD:
        return warn(desc + ": source builds (flash-attn) take hours", [
            "Prefer prebuilt wheels; tokenization and data loading also slow down."])
    return ok(desc)


@check("system.disk", "Disk space", "System",
       "free space in the working directory and the Hugging Face cache", needs=("host",))
def disk(host: HostFacts) -> Result:
    by_device: dict[object, list] = {}
    for d in host.disks:
        by_device.setdefault(d.device if d.device is not None else d.measured_at, []).append(d)
    items = []
    for disks in by_device.values():
        free = disks[0].free
        roles = " and ".join(f"{d.role} ({d.path})" for d in disks)
        if free is None:
            items.append(Item(Status.SKIP, f"{roles}: free space unknown"))
            continue
        low = sum(DISK_NEEDS.get(d.role, (0, 0))[0] for d in disks)
        good = sum(DISK_NEEDS.get(d.role, (0, 0))[1] for d in disks)
        status = Status.FAIL if free < low else Status.WARN if free < good else Status.OK
        need = f" (needs {gib(low)}, {gib(good)} to be comfortable)" if status != Status.OK else ""
        items.append(Item(status, f"{gib(free)} free for {roles}{need}"))
    summary = "; ".join(i.message for i in items)
    remedy = Remedy(text="Free space, or point HF_HOME / the output_dir at a larger disk.")
    result = from_items(items, summary, summary, remedy)
    if len(items) == 1:  # one disk: the summary already says it all
        result.items = []
    return result
