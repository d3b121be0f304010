"""Real shared libraries for the binary-compatibility tests, built with the system compiler:
a torch-like libc10.so and extensions built against it in the ways that break in the field."""

from __future__ import annotations

import subprocess
from pathlib import Path

C10 = """#include <string>
namespace c10 {
namespace cuda { void c10_cuda_check_implementation(int, const char*, const char*, int, bool) {} }
void check(const std::string& s) { (void)s; }
}
"""
# An extension's view of the c10 header. PARAM is the line-number type: `int` in the installed torch,
# `unsigned int` in the older header an old build saw (the real c10_cuda_check_implementation drift).
EXT = """#include <string>
namespace c10 {
namespace cuda { void c10_cuda_check_implementation(int, const char*, const char*, PARAM, bool); }
void check(const std::string&);
}
EXTRA_DECL
extern "C" int envdoctor_ext_entry() {
  c10::cuda::c10_cuda_check_implementation(0, "f", "g", 1, false);
  c10::check(std::string("x"));
  EXTRA_CALL
  return 0;
}
"""


def gxx(out: Path, source: str, *flags: str) -> Path:
    src = out.with_suffix(".cpp")
    src.write_text(source)
    subprocess.run(["g++", "-shared", "-fPIC", "-o", str(out), str(src), *flags], check=True)
    return out


def build_site(site: Path, build: Path) -> dict[str, Path]:
    """site/torch (version.py + lib/libc10.so) and site/fakeext/ext_*.so with a dist-info listing them."""
    lib = site / "torch" / "lib"
    lib.mkdir(parents=True)
    build.mkdir(parents=True, exist_ok=True)
    (site / "torch" / "version.py").write_text("__version__ = '2.9.0+cpu'\ncuda = None\nhip = None\n")
    (site / "torch-2.9.0+cpu.dist-info").mkdir()
    (site / "torch-2.9.0+cpu.dist-info" / "METADATA").write_text("Name: torch\nVersion: 2.9.0+cpu\n")
    gxx(lib / "libc10.so", C10)
    gxx(build / "libabsent.so", "extern \"C\" int absent_fn() { return 1; }\n")
    ext_dir = site / "fakeext"
    ext_dir.mkdir()
    link = [f"-L{lib}", "-lc10", "-Wl,--no-as-needed", "-Wl,-rpath,$ORIGIN/../torch/lib"]

    def ext(name, param="int", abi=1, extra_decl="", extra_call="", extra_flags=()):
        src = EXT.replace("PARAM", param).replace("EXTRA_DECL", extra_decl).replace("EXTRA_CALL", extra_call)
        return gxx(ext_dir / f"{name}.so", src, f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *link, *extra_flags)

    built = {
        "ok": ext("ext_ok"),
        "old": ext("ext_old", param="unsigned int"),
        "abi": ext("ext_abi", abi=0),
        "missing": ext("ext_missing", extra_decl='extern "C" int absent_fn();', extra_call="absent_fn();",
                       extra_flags=(f"-L{build}", "-labsent")),
    }
    info = site / "fakeext-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Name: fakeext\nVersion: 1.0\n")
    (info / "RECORD").write_text("".join(f"fakeext/{p.name},,\n" for p in built.values()))
    return built
