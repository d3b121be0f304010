"""CUDA toolkit facts: every nvcc that a build could pick up, and its version."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

from envdoctor.context import Context
from envdoctor.gpu_compat import major_minor
from envdoctor.system import System

_RELEASE = re.compile(r"release (\d+)\.(\d+)")


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


def _version(system: System, nvcc: str) -> str | None:
    # CUDA >= 11.1 writes version.json beside bin/: no process needed.
    root = nvcc.rsplit("/bin/", 1)[0]
    text = system.read_text(f"{root}/version.json")
    if text:
        try:
            data = json.loads(text)
            return (data.get("cuda_nvcc") or data.get("cuda") or {}).get("version")
        except ValueError:
            pass
    res = system.run([nvcc, "--version"], timeout=10.0)
    m = _RELEASE.search(res.stdout) if res.ok else None
    return f"{m[1]}.{m[2]}" if m else None


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
    for real, n in by_real.items():
        n.version = _version(system, real)
    return ToolkitFacts(list(by_real.values()), cuda_home)
