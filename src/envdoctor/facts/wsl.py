"""WSL facts, read from inside the Linux VM: version, the Windows host (through interop, bounded by
timeouts), the Windows profile folder, `.wslconfig`, and the GPU plumbing (/usr/lib/wsl/lib)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from envdoctor.context import Context
from envdoctor.facts.host import wsl_version
from envdoctor.system import System

if TYPE_CHECKING:  # the .wslconfig reader loads only on WSL (below): elsewhere it is ~3 ms of every check
    from envdoctor.wslconfig import WslConfig

INTEROP = ("/proc/sys/fs/binfmt_misc/WSLInterop", "/proc/sys/fs/binfmt_misc/WSLInterop-late")
POWERSHELL = "/WINDOWS/System32/WindowsPowerShell/v1.0/powershell.exe"
CMD = "/WINDOWS/System32/cmd.exe"
INTEROP_TIMEOUT = 10.0
NOT_USERS = {"public", "default", "default user", "all users", "desktop.ini", "defaultapppool", "wdagutilityaccount"}
LINUX_DRIVER_PACKAGES = re.compile(r"^(nvidia-driver-\d+|libnvidia-compute-\d+|nvidia-dkms-\d+|nvidia-kernel-common-\d+"
                                   r"|nvidia-utils-\d+|cuda-drivers(-\d+)?)(-server)?$")


@dataclass
class WslFacts:
    version: int | None                        # None: not WSL
    interop: bool = False
    mount_root: str = "/mnt/"
    host_ram: int | None = None                # Windows' RAM in bytes, through interop
    host_cpus: int | None = None
    host_from: str | None = None               # how host facts were read, or why not
    profile: str | None = None                 # the Windows profile folder, as a Linux path
    profile_from: str | None = None
    config_path: str | None = None
    config_text: str | None = None             # decoded (UTF-8 or UTF-16, BOM dropped); None: none or unreadable
    config: WslConfig | None = None
    nvidia_smi: list[str] = field(default_factory=list)      # every nvidia-smi on PATH and the WSL one
    smi_shadow: str | None = None              # a distro nvidia-smi found before the WSL one
    wsl_libcuda: bool = False                  # /usr/lib/wsl/lib/libcuda.so.1 exists
    libcuda_resolves_to: str | None = None     # what the loader finds for libcuda.so.1
    linux_driver_packages: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("config_text", None)
        if out.get("config"):
            out["config"].pop("ini", None)   # offsets for the editor; the values and problems are in the report
        return out


def windows_to_linux(path: str, mount_root: str) -> str | None:
    m = re.match(r"^\s*([A-Za-z]):[\\/](.*?)\s*$", path)
    if not m:
        return None
    rest = m[2].replace("\\", "/").rstrip("/")
    return f"{mount_root.rstrip('/')}/{m[1].lower()}/{rest}"


def _mount_root(system: System) -> str:
    """[automount] root in /etc/wsl.conf, read by the same reader as .wslconfig (WSL parses both with
    one parser; init reads wsl.conf on Linux, so without CRLF folding)."""
    from envdoctor.wslini import IniError, decode, scan
    data = system.read_bytes("/etc/wsl.conf")
    try:
        root = scan(decode(data).text, text_mode=False).get("automount.root") if data else None
    except IniError:
        root = None
    if not root:
        return "/mnt/"
    return root if root.endswith("/") else root + "/"


def _interop(system: System, argv: list[str]) -> str | None:
    res = system.run(argv, timeout=INTEROP_TIMEOUT)
    return res.stdout.strip().replace("\r", "") if res.ok and res.stdout.strip() else None


def _profile(system: System, facts: WslFacts) -> None:
    root = facts.mount_root.rstrip("/")
    if facts.interop:
        wslvar = system.which("wslvar")
        value = _interop(system, [wslvar, "USERPROFILE"]) if wslvar else None
        how = "wslvar USERPROFILE"
        if value is None and system.exists(f"{root}/c{CMD}"):
            value = _interop(system, [f"{root}/c{CMD}", "/c", "echo %USERPROFILE%"])
            how = "cmd.exe /c echo %USERPROFILE%"
        linux = windows_to_linux(value.splitlines()[-1], facts.mount_root) if value else None
        if linux and system.is_dir(linux):
            facts.profile, facts.profile_from = linux, how
            return
    users = [u for u in system.listdir(f"{root}/c/Users") if u.lower() not in NOT_USERS
             and system.is_dir(f"{root}/c/Users/{u}")]
    me = system.env.get("USER", "")
    pick = next((u for u in users if u.lower() == me.lower()), users[0] if len(users) == 1 else None)
    if pick:
        facts.profile, facts.profile_from = f"{root}/c/Users/{pick}", f"{root}/c/Users (the only profile)" \
            if len(users) == 1 else f"{root}/c/Users/$USER"


def _host(system: System, facts: WslFacts) -> None:
    ps = f"{facts.mount_root.rstrip('/')}/c{POWERSHELL}"
    if not facts.interop:
        facts.host_from = "interop is off: Windows' RAM is unknown"
        return
    if not system.exists(ps):
        facts.host_from = f"{ps} not found"
        return
    out = _interop(system, [ps, "-NoProfile", "-NonInteractive", "-Command",
                            "$c=Get-CimInstance Win32_ComputerSystem; \"$($c.TotalPhysicalMemory) "
                            "$($c.NumberOfLogicalProcessors)\""])
    parts = (out or "").split()
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        facts.host_ram, facts.host_cpus, facts.host_from = int(parts[0]), int(parts[1]), "powershell.exe"
    else:
        facts.host_from = f"powershell.exe gave no answer within {INTEROP_TIMEOUT:g} s"


def _dpkg_packages(system: System) -> list[str]:
    text = system.read_text("/var/lib/dpkg/status") or ""
    found, name = [], None
    for line in text.splitlines():
        if line.startswith("Package: "):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("Status: ") and "installed" in line and name and LINUX_DRIVER_PACKAGES.match(name):
            found.append(name)
    return found


def probe_wsl(system: System, ctx: Context) -> WslFacts:
    kernel = (system.read_text("/proc/sys/kernel/osrelease") or "").strip()
    facts = WslFacts(wsl_version(kernel, system.read_text("/proc/version")))
    if facts.version is None:
        return facts
    facts.interop = any(system.exists(p) for p in INTEROP)
    facts.mount_root = _mount_root(system)
    _host(system, facts)
    _profile(system, facts)
    if facts.profile:
        facts.config_path = f"{facts.profile}/.wslconfig"
        data = system.read_bytes(facts.config_path)
        if data is not None:
            from envdoctor.wslconfig import read
            from envdoctor.wslini import IniError, decode
            facts.config = read(data, facts.config_path)
            try:
                facts.config_text = decode(data).text
            except IniError:
                facts.config_text = None
    wsl_smi = "/usr/lib/wsl/lib/nvidia-smi"
    on_path = system.which("nvidia-smi")
    facts.nvidia_smi = [p for p in (on_path, wsl_smi) if p and system.exists(p)]
    if on_path and system.realpath(on_path) != system.realpath(wsl_smi) and not on_path.startswith("/usr/lib/wsl/"):
        facts.smi_shadow = on_path
    facts.wsl_libcuda = system.exists("/usr/lib/wsl/lib/libcuda.so.1")
    from envdoctor.linker import Resolver
    hit, _ = Resolver(system).resolve("libcuda.so.1", "/", [], [])
    facts.libcuda_resolves_to = system.realpath(hit) if hit else None
    facts.linux_driver_packages = _dpkg_packages(system)
    return facts
