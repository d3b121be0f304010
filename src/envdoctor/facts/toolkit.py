"""CUDA toolkit facts: every nvcc that a build could pick up, and its version."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

from envdoctor.context import Context
from envdoctor.gpu_compat import major_minor
from envdoctor.system import System

_RELEASE = re.compile(r"\brelease (\d+)\.(\d+)\b", re.ASCII)


@dataclass
class Nvcc:
    path: str
    version: str | None          # "13.0.88"
    found_by: list[str] = field(default_factory=list)   # "PATH", "CUDA_HOME", "/usr/local/cuda*"

    @property
    def major_minor(self) -> tuple[int, int] | None:
        return major_minor(self.version)


@dataclass
class ToolkitFacts:
    nvccs: list[Nvcc] = field(default_factory=list)
    cuda_home: str | None = None     # CUDA_HOME / CUDA_PATH as set

    @property
    def on_path(self) -> Nvcc | None:
        return next((n for n in self.nvccs if "PATH" in n.found_by), None)

    @property
    def for_builds(self) -> Nvcc | None:
        """The nvcc torch.utils.cpp_extension uses: CUDA_HOME first, then PATH, then /usr/local/cuda."""
        for tag in ("CUDA_HOME", "PATH", "/usr/local/cuda"):
            hit = next((n for n in self.nvccs if tag in n.found_by), None)
            if hit:
                return hit
        return self.nvccs[0] if self.nvccs else None

    def to_dict(self) -> dict:
        return asdict(self)


_VERSION = re.compile(r"^\d+\.\d+(\.\d+)*$", re.ASCII)


def parse_version_json(text: str) -> str | None:
    """The nvcc version from a toolkit's version.json; None when the file is not what CUDA writes."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    for key in ("cuda_nvcc", "cuda"):
        entry = data.get(key)
        version = entry.get("version") if isinstance(entry, dict) else None
        if isinstance(version, str) and _VERSION.match(version):
            return version
    return None


def parse_nvcc_version(text: str) -> str | None:
    """MAJOR.MINOR from `nvcc --version` ("Cuda compilation tools, release 12.8, V12.8.93")."""
    m = _RELEASE.search(text)
    return f"{m[1]}.{m[2]}" if m else None


def _versions(system: System, nvccs: list[str]) -> list[str | None]:
    """Each nvcc's version. CUDA >= 11.1 writes version.json beside bin/: no process needed; the others run
    `nvcc --version`, all started before any is waited for (a check waits for the slowest, not the sum)."""
    found: list[str | None] = []
    for nvcc in nvccs:
        text = system.read_text(f"{nvcc.rsplit('/bin/', 1)[0]}/version.json")
        found.append(parse_version_json(text) if text else None)
    running = {i: system.spawn([nvcc, "--version"], timeout=10.0) for i, nvcc in enumerate(nvccs) if not found[i]}
    for i, wait in running.items():
        res = wait()
        found[i] = parse_nvcc_version(res.stdout) if res.ok else None
    return found


def probe_toolkit(system: System, ctx: Context) -> ToolkitFacts:
    cuda_home = system.env.get("CUDA_HOME") or system.env.get("CUDA_PATH")
    candidates: list[tuple[str, str]] = []
    which = system.which("nvcc")
    if which:
        candidates.append((which, "PATH"))
    if cuda_home:
        candidates.append((f"{cuda_home.rstrip('/')}/bin/nvcc", "CUDA_HOME"))
    candidates.append(("/usr/local/cuda/bin/nvcc", "/usr/local/cuda"))
    for entry in system.listdir("/usr/local"):
        if entry.startswith("cuda-"):
            candidates.append((f"/usr/local/{entry}/bin/nvcc", "/usr/local/cuda*"))
    by_real: dict[str, Nvcc] = {}
    for path, how in candidates:
        if not system.exists(path):
            continue
        real = system.realpath(path)
        if real not in by_real:
            by_real[real] = Nvcc(path, None)
        if how not in by_real[real].found_by:
            by_real[real].found_by.append(how)
    for n, version in zip(by_real.values(), _versions(system, list(by_real))):
        n.version = version
    return ToolkitFacts(list(by_real.values()), cuda_home)
