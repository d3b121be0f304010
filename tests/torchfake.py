"""A torch install on disk for a fake machine: version.py, metadata, and real ELF libraries built with
the system compiler — libc10.so with C++ exports (cxx11 ABI or not) and libtorch_cuda.so whose
`.nv_fatbin` section holds a fat binary listing chosen architectures (what an RTX 5090 box or a CUDA
build would have, which this machine cannot)."""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
from pathlib import Path

from envdoctor.gpu_compat import parse_arch

# Where compiled libraries are cached for the run: conftest points it into tmp_path_factory.
BUILD_CACHE: Path | None = None


def fatbin(sass=(), ptx=()) -> bytes:
    entries = b""
    for kind, names in ((2, sass), (1, ptx)):
        for name in names:
            major, minor, suffix = parse_arch(name)
            flags = 0x11 | (0x100000 if suffix else 0)
            payload = b"\0" * 8
            head = struct.pack("<HHIQIIHHIIIQ", kind, 0x0101, 64, len(payload), len(payload), 0, 1, 8,
                               major * 10 + minor, 0, 0, flags)
            entries += head.ljust(64, b"\0") + payload
    return struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(entries)) + entries


def _compile(source: str, lang: str) -> Path:
    """Build a shared library once per distinct source (cached across tests)."""
    assert BUILD_CACHE is not None, "tests/conftest.py sets torchfake.BUILD_CACHE"
    digest = hashlib.sha256((lang + source).encode()).hexdigest()[:16]
    out = BUILD_CACHE / f"{digest}.so"
    if not out.exists():
        BUILD_CACHE.mkdir(parents=True, exist_ok=True)
        src = BUILD_CACHE / f"{digest}.{lang}"
        src.write_text(source)
        compiler = "g++" if lang == "cpp" else "gcc"
        tmp = out.with_suffix(".tmp")
        subprocess.run([compiler, "-shared", "-fPIC", "-O0", "-o", str(tmp), str(src)], check=True)
        tmp.replace(out)
    return out


def fatbin_library(sass=(), ptx=(), copies: int = 1, special=()) -> Path:
    """`copies` containers with the build archs (one per compiled file), plus one per `special`
    arch list (a hand-tuned kernel compiled for other archs)."""
    blob = fatbin(sass, ptx) * copies + b"".join(fatbin(extra) for extra in special)
    data = ", ".join(str(b) for b in blob)
    return _compile(f'__attribute__((section(".nv_fatbin"), used)) const unsigned char fb[] = {{{data}}};\n', "c")


def c10_library(cxx11: bool = True) -> Path:
    return _compile(f"#define _GLIBCXX_USE_CXX11_ABI {int(cxx11)}\n#include <string>\n"
                    "namespace c10 { void check(const std::string& s) { (void)s; } }\n", "cpp")


def install_torch(root: Path, site: str, version: str, cuda: str | None, sass=(), ptx=(), cxx11=True,
                  copies=1, special=()) -> None:
    """Write torch into <root><site> as pip would leave it (the parts envdoctor reads)."""
    pkg = root / site.lstrip("/") / "torch"
    (pkg / "lib").mkdir(parents=True, exist_ok=True)
    (pkg / "version.py").write_text(
        f"from typing import Optional\n__all__ = ['__version__']\n__version__ = '{version}'\n"
        f"debug = False\ncuda: Optional[str] = {cuda!r}\ngit_version = 'abc123'\nhip: Optional[str] = None\n")
    shutil.copy(c10_library(cxx11), pkg / "lib" / "libc10.so")
    if cuda:
        shutil.copy(fatbin_library(sass, ptx, copies, special), pkg / "lib" / "libtorch_cuda.so")
