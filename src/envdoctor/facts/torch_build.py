"""PyTorch build facts without importing torch: version.py, the libraries' symbols and fat binaries."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from envdoctor.cache import FileCache
from envdoctor.context import Context
from envdoctor.elf import ElfError, ElfFile
from envdoctor.facts.python_env import PythonEnv
from envdoctor.fatbin import Archs, archs_of
from envdoctor.gpu_compat import major_minor
from envdoctor.pins import torch_build_tag
from envdoctor.system import System

_ASSIGN = re.compile(r"^(\w+)\s*(?::[^=]+)?=\s*(.+)$", re.M)
# Libraries that carry torch's CUDA kernels (2.x layouts); libtorch_cuda_cu/cpp are the 1.x split.
CUDA_LIBS = ("libtorch_cuda.so", "libc10_cuda.so", "libtorch_cuda_linalg.so", "libtorch_cuda_cu.so",
             "libtorch_cuda_cpp.so")


@dataclass
class TorchFacts:
    installed: bool
    version: str | None = None
    build_tag: str | None = None       # "cu128", "cpu", "rocm6.3"; None for plain PyPI builds
    cuda: str | None = None            # torch.version.cuda, e.g. "12.8"; None for CPU builds
    hip: str | None = None
    git_version: str | None = None
    path: str | None = None            # the torch package folder
    cxx11_abi: bool | None = None
    # Build archs (in most fat binaries) and extra ones only a few hand-tuned kernels carry.
    archs: dict = field(default_factory=lambda: {"sass": [], "ptx": [], "extra": []})
    arch_libs: list[str] = field(default_factory=list)
    cuda_wheels: dict[str, str] = field(default_factory=dict)  # nvidia-* wheels: name -> version

    @property
    def cuda_tuple(self) -> tuple[int, int] | None:
        return major_minor(self.cuda)

    @property
    def minor(self) -> str | None:
        return ".".join(self.version.split("+")[0].split(".")[:2]) if self.version else None

    def to_dict(self) -> dict:
        return asdict(self)


def parse_version_py(text: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name, value in _ASSIGN.findall(text):
        value = value.strip()
        if value == "None":
            out[name] = None
        elif value[:1] in "'\"" and value[-1:] == value[:1]:
            out[name] = value[1:-1]
    return out


def _scan_lib(path: str, system: System, cache: FileCache) -> dict:
    hit = cache.get(path)
    if hit is not None:
        return hit
    try:
        with ElfFile(system.path(path)) as elf:
            archs = archs_of(elf)
            dynstr = elf.section(".dynstr")
            abi = None
            if dynstr is not None:
                strings = elf.section_bytes(dynstr)
                abi = strings.find(b"St7__cxx11") >= 0 if path.endswith("libc10.so") else None
        value = {"counts": archs.counts, "containers": archs.containers, "cxx11": abi}
    except (OSError, ElfError, ValueError) as exc:
        value = {"error": str(exc)}
    cache.put(path, value)
    return value


def probe_torch(system: System, ctx: Context, python: PythonEnv) -> TorchFacts:
    wheels = {d.name: d.version for d in python.distributions
              if d.name and d.key.startswith("nvidia-") and d.version}
    dist = python.get("torch")
    if dist is None:
        return TorchFacts(False, cuda_wheels=wheels)
    pkg = f"{dist.location}/torch"
    info = parse_version_py(system.read_text(f"{pkg}/version.py") or "")
    version = info.get("__version__") or dist.version
    facts = TorchFacts(True, version, torch_build_tag(version), info.get("cuda"), info.get("hip"),
                       info.get("git_version"), pkg, cuda_wheels=wheels)
    if facts.build_tag is None and info:  # PyPI's plain build: its tag follows from version.py
        major_minor = (facts.cuda or "").split(".")[:2]
        facts.build_tag = (f"cu{''.join(major_minor)}" if facts.cuda else
                           f"rocm{facts.hip}" if facts.hip else "cpu")
    cache = FileCache(system, "elf-scan")
    archs = Archs()
    for lib in ("libc10.so",) + CUDA_LIBS:
        path = f"{pkg}/lib/{lib}"
        if not system.exists(path):
            continue
        scanned = _scan_lib(path, system, cache)
        if "error" in scanned:
            continue
        if scanned.get("cxx11") is not None:
            facts.cxx11_abi = scanned["cxx11"]
        if lib in CUDA_LIBS and scanned["containers"]:
            facts.arch_libs.append(lib)
            archs.containers += scanned["containers"]
            for arch, n in scanned["counts"].items():
                archs.counts[arch] = archs.counts.get(arch, 0) + n
    cache.save()
    sass, ptx, extra = archs.build_archs()
    facts.archs = {"sass": sass, "ptx": ptx, "extra": extra}
    return facts
