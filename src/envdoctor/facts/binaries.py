"""Compiled extensions that link against torch or CUDA, read from their ELF files alone.

For each one: the libraries it needs that the loader will not find, the C++ symbols of torch's
namespaces it needs that torch's libraries do not export, and the C++ ABI it was built with. Results
are cached per file (path, size, mtime, inode) together with the fingerprint of the torch they were
checked against.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field

from envdoctor.cache import FileCache
from envdoctor.context import Context
from envdoctor.elf import ElfError, ElfFile
from envdoctor.facts.python_env import PythonEnv
from envdoctor.facts.torch_build import TorchFacts
from envdoctor.linker import Resolver, expand
from envdoctor.system import System

TORCH_LIB = re.compile(r"^lib(c10|torch|shm|caffe2)[\w.-]*\.so")
CUDA_LIB = re.compile(r"^lib(cuda|cudart|cublas|cublasLt|cusparse|cusolver|curand|cufft|nvrtc|nvJitLink|"
                      r"cudnn|nccl|nvjpeg|cupti|nvToolsExt)[\w.-]*\.so")
TORCH_SYMBOL = re.compile(r"^_Z(?:T[VIS])?N[KVRO]*(?:3c10|2at|5torch|6caffe2)")
OLD_STRING = re.compile(r"(?:RK|PK|E|I|_)Ss")
# bitsandbytes < 0.43 also ships libbitsandbytes_cudaXYZ_nocublaslt.so (for GPUs without cuBLASLt).
BNB_VARIANT = re.compile(r"libbitsandbytes_(cuda\d+|cpu|rocm[\w.]*|xpu|mps)(?:_nocublaslt)?\.so$")
LD_SO_CACHE = "/etc/ld.so.cache"
CUDART = re.compile(r"^libcudart[\w.-]*\.so\.(\d+)")  # also auditwheel's libcudart.faf08d9a.so.12


@dataclass
class Extension:
    dist: str
    version: str | None
    path: str
    rel: str                           # path inside its site-packages folder
    module: str | None                 # import name for Python extension modules, None for plain libraries
    needed: list[str] = field(default_factory=list)
    unresolved: list[dict] = field(default_factory=list)   # {name, searched}
    missing: list[dict] = field(default_factory=list)      # {mangled, demangled, instead}
    abi: str | None = None             # "cxx11", "pre-cxx11", None: no std::string in torch calls
    unused: str | None = None          # why this file is never loaded in this environment
    cuda_major: int | None = None      # the CUDA runtime it was built against (from its libcudart)
    conflicts: list[str] = field(default_factory=list)  # it loads, but does not fit this torch

    @property
    def will_fail(self) -> bool:
        """Loading it will fail (what --deep checks against a real load)."""
        return not self.unused and bool(self.unresolved or self.missing)


@dataclass
class BinaryFacts:
    extensions: list[Extension] = field(default_factory=list)
    files_scanned: int = 0
    from_cache: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _so_files(system: System, dist, cache: FileCache | None = None) -> list[str]:
    """The shared objects a distribution installed (its RECORD; the list is cached against that file)."""
    if dist.kind != "dist-info":
        return []
    record = f"{dist.path}/RECORD"
    hit = cache.get(record) if cache is not None else None
    if isinstance(hit, list):
        return hit
    text = system.read_text(record)
    out = []
    for line in (text or "").splitlines():
        if ".so" not in line:
            continue
        rel = line.split(",", 1)[0]
        base = rel.rsplit("/", 1)[-1]
        if base.endswith(".so") or ".so." in base:
            out.append(f"{dist.location}/{rel}" if not rel.startswith("/") else rel)
    if cache is not None and text is not None:
        cache.put(record, out)
    return out


def _module_name(path: str, location: str) -> str:
    rel = path[len(location) + 1:] if path.startswith(location + "/") else path.rsplit("/", 1)[-1]
    parts = rel.split("/")
    parts[-1] = parts[-1].split(".", 1)[0]
    return ".".join(parts)


def _read(system: System, path: str) -> dict | None:
    """Linking facts of one file, or None when it is not an ELF object we read."""
    try:
        with ElfFile(system.path(path)) as elf:
            dyn = elf.dynamic()
            related = any(TORCH_LIB.match(n) or CUDA_LIB.match(n) for n in dyn.needed)
            out = {"needed": dyn.needed, "rpath": dyn.rpath, "runpath": dyn.runpath, "related": related}
            if related:
                stem = path.rsplit("/", 1)[-1].split(".", 1)[0]
                out["pyinit"] = elf.exports(f"PyInit_{stem}")
                out["torch_symbols"] = [s for s in elf.undefined_symbols() if TORCH_SYMBOL.match(s)]
            return out
    except (OSError, ElfError, ValueError, IndexError):
        return None


def _abi(symbols: list[str]) -> str | None:
    if any("St7__cxx11" in s for s in symbols):
        return "cxx11"
    if any(OLD_STRING.search(s) for s in symbols):
        return "pre-cxx11"
    return None


class TorchExports:
    """torch's libraries, opened once, answering "is this symbol exported"."""

    def __init__(self, system: System, torch: TorchFacts) -> None:
        self.libs: list[ElfFile] = []
        self.paths: dict[str, str] = {}
        lib_dir = f"{torch.path}/lib"
        for name in system.listdir(lib_dir):
            if name.endswith(".so") or ".so." in name:
                self.paths[name] = f"{lib_dir}/{name}"

    def open(self, system: System) -> None:
        if self.libs:
            return
        for path in self.paths.values():
            try:
                self.libs.append(ElfFile(system.path(path)))
            except (OSError, ElfError):
                continue

    def exported(self, name: str) -> bool:
        return any(lib.exports(name) for lib in self.libs)

    def similar(self, mangled: str) -> list[str]:
        """Exported names with the same function name: what torch offers instead."""
        m = re.match(r"^(_ZN[KVRO]*(?:\d+\w+?)+?E)", mangled)
        prefix = m.group(1) if m else mangled[: max(8, len(mangled) // 2)]
        found = []
        for lib in self.libs:
            found += [n for n in lib.names_with_prefix(prefix) if n != mangled and lib.exports(n)]
        return sorted(set(found))[:3]

    def close(self) -> None:
        for lib in self.libs:
            lib.close()
        self.libs = []


def preloaded_by_torch(system: System, torch: TorchFacts, exports: TorchExports, cache: FileCache) -> dict[str, str]:
    """Sonames in the process once `import torch` ran: torch/lib and what its RPATHs point at
    (the nvidia-* wheels' libraries)."""
    loaded = dict(exports.paths)
    for path in exports.paths.values():
        info = cache.get(path)
        if info is None:
            info = _search_paths(system, path)
            cache.put(path, info)
        origin = path.rsplit("/", 1)[0]
        for d in info.get("rpath", []) + info.get("runpath", []):
            folder = expand(d, origin)
            for name in system.listdir(folder):
                if ".so" in name:
                    loaded.setdefault(name, f"{folder}/{name}")
    return loaded


def _search_paths(system: System, path: str) -> dict:
    """Only what the loader follows from one of torch's own libraries: its RPATH and RUNPATH (not its
    thousands of undefined symbols, which nothing here asks about and which made the cache 18 MB)."""
    try:
        with ElfFile(system.path(path)) as elf:
            dyn = elf.dynamic()
            return {"rpath": dyn.rpath, "runpath": dyn.runpath}
    except (OSError, ElfError, ValueError, IndexError):
        return {}


def demangle(system: System, names: list[str]) -> dict[str, str]:
    if not names:
        return {}
    res = system.run(["c++filt"], timeout=5.0, input="\n".join(names) + "\n")
    lines = res.stdout.splitlines() if res.ok else []
    return dict(zip(names, lines)) if len(lines) == len(names) else {n: n for n in names}


def _unused(path: str, torch: TorchFacts, env) -> str | None:
    m = BNB_VARIANT.search(path)
    if not m:
        return None
    want = env.get("BNB_CUDA_VERSION")
    want = f"cuda{want}" if want else (f"cuda{torch.cuda.replace('.', '')}" if torch.cuda else "cpu")
    if m[1] == want:
        return None
    return f"bitsandbytes loads libbitsandbytes_{want}.so in this environment, not this one"


def probe_binaries(system: System, ctx: Context, python: PythonEnv, torch: TorchFacts) -> BinaryFacts:
    start = time.monotonic()
    facts = BinaryFacts()
    if not torch.installed or not torch.path:
        return facts
    cache = FileCache(system, "elf-links")
    exports = TorchExports(system, torch)
    fingerprint = "|".join(sorted(f"{p}:{sig}" for p in exports.paths.values() if (sig := cache.signature(p))))
    resolver = Resolver(system, preloaded_by_torch(system, torch, exports, cache))
    # `ldconfig -p` (a process, ~5 ms) only prints /etc/ld.so.cache: its parse is cached against that file.
    ld = cache.get(LD_SO_CACHE)
    if isinstance(ld, dict):
        resolver.use_ld_cache(ld)
    else:
        ld = resolver.ld_cache()
        if ld:
            cache.put(LD_SO_CACHE, ld)
    skip_dirs = (f"{torch.path}/", f"{torch.path.rsplit('/', 1)[0]}/nvidia/")
    pending_demangle: list[str] = []
    try:
        for dist in python.distributions:
            if dist.key == "torch" or dist.key.startswith("nvidia-"):
                continue  # the libraries everything else links against, not extensions of them
            active = python.get(dist.key)
            shadowed = (f"shadowed by {active.label} earlier on sys.path: never imported"
                        if active is not None and active is not dist else None)
            for path in _so_files(system, dist, cache):
                if path.startswith(skip_dirs):
                    continue
                facts.files_scanned += 1
                info = cache.get(path)
                if info is None:
                    info = _read(system, path)
                    cache.put(path, info)
                if not info or not info.get("related"):
                    continue
                ext = Extension(dist.name or dist.key, dist.version, path, path[len(dist.location) + 1:],
                                _module_name(path, dist.location) if info.get("pyinit") else None,
                                info["needed"], abi=_abi(info.get("torch_symbols", [])),
                                unused=shadowed or _unused(path, torch, system.env))
                ext.cuda_major, ext.conflicts = _cuda_conflict(info["needed"], torch)
                origin = path.rsplit("/", 1)[0]
                siblings = []
                for name in info["needed"]:
                    found, searched = resolver.resolve(name, origin, info["rpath"], info["runpath"])
                    if found is None:
                        ext.unresolved.append({"name": name, "searched": searched})
                    elif not found.startswith(skip_dirs) and TORCH_LIB.match(name) is None:
                        siblings.append(found)
                if info.get("missing_for") == fingerprint:  # checked against this very torch before
                    facts.from_cache += 1
                else:
                    exports.open(system)
                    missing = [s for s in info.get("torch_symbols", []) if not exports.exported(s)]
                    missing = _not_in_siblings(system, missing, siblings)
                    info = {**info, "missing": [{"mangled": m, "instead": exports.similar(m)} for m in missing],
                            "missing_for": fingerprint}
                    cache.put(path, info)
                ext.missing = [dict(m) for m in info["missing"]]
                pending_demangle += [m["mangled"] for m in ext.missing] + [i for m in ext.missing for i in m["instead"]]
                facts.extensions.append(ext)
    finally:
        exports.close()
        cache.save()
    names = demangle(system, sorted(set(pending_demangle)))
    for ext in facts.extensions:
        for m in ext.missing:
            m["demangled"] = names.get(m["mangled"], m["mangled"])
            m["instead"] = [names.get(i, i) for i in m["instead"]]
    facts.seconds = time.monotonic() - start
    return facts


def _not_in_siblings(system: System, missing: list[str], siblings: list[str]) -> list[str]:
    """Symbols that the extension's own companion libraries (libtorchaudio.so) define are not missing."""
    if not missing or not siblings:
        return missing
    still = list(missing)
    for path in siblings:
        try:
            with ElfFile(system.path(path)) as elf:
                still = [s for s in still if not elf.exports(s)]
        except (OSError, ElfError):
            continue
    return still


def _cuda_conflict(needed: list[str], torch: TorchFacts) -> tuple[int | None, list[str]]:
    """A torch extension built for another CUDA major than torch's. It may still load (torchvision's
    image.so brings its own libcudart.so.12 and loads beside torch 2.11+cu130), but then two CUDA runtimes
    share the process and torch's tensors are not its runtime's."""
    majors = {int(m[1]) for n in needed for m in [CUDART.match(n)] if m}
    major = max(majors) if majors else None
    links_torch = any(TORCH_LIB.match(n) for n in needed)
    want = torch.cuda_tuple[0] if torch.cuda_tuple else None
    if major is None or not links_torch:
        return major, []
    if want is None:
        return major, [f"built for CUDA {major}; torch {torch.version} has no CUDA"]
    if major != want:
        return major, [f"built for CUDA {major}; torch {torch.version} uses CUDA {want}: two CUDA runtimes in "
                       "one process, and torch's tensors are not this runtime's"]
    return major, []
