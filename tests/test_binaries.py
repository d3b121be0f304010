"""Predicting extension load failures from ELF files, checked against really loading them."""

import subprocess
import sys
import venv

import pytest
from elfbuild import build_site

from envdoctor.checks import binaries as B
from envdoctor.context import Context
from envdoctor.elf import ElfFile
from envdoctor.facts.binaries import probe_binaries
from envdoctor.facts.gpu import GpuFacts
from envdoctor.facts.imports import load_for_real
from envdoctor.facts.python_env import probe_python
from envdoctor.facts.torch_build import probe_torch
from envdoctor.model import Status
from envdoctor.system import System
from fakes import linux_box

OLD = "_ZN3c104cuda29c10_cuda_check_implementationEiPKcS2_jb"


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    root = tmp_path_factory.mktemp("bin")
    built = build_site(root / "site", root / "build")
    # A bare venv: what the test interpreter itself has installed (a real torch, say) stays out of sight.
    venv.EnvBuilder(with_pip=False).create(root / "venv")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root / "site"), "PYTHONNOUSERSITE": "1",
           "HOME": str(root / "home")}
    system = System(env=env, cwd=str(root))
    ctx = Context(python=str(root / "venv" / "bin" / "python"), python_reason="test", smoke_timeout=60)
    py = probe_python(system, ctx)
    torch = probe_torch(system, ctx, py)
    facts = probe_binaries(system, ctx, py, torch)
    exts = {e.path.rsplit("/", 1)[-1][4:-3]: e for e in facts.extensions}
    real = load_for_real(system, ctx, [{"path": str(p), "module": None} for p in built.values()], False)
    return system, ctx, py, torch, facts, exts, {k: real[str(p)] for k, p in built.items()}


def test_the_torch_like_library_exports_what_the_good_extension_needs(scanned):
    *_, exts, real = scanned
    assert set(exts) == {"ok", "old", "abi", "missing"}
    assert not exts["ok"].will_fail and real["ok"] == {"ok": True, "error": None}


def test_older_header_predicts_the_undefined_symbol(scanned):
    *_, exts, real = scanned
    ext = exts["old"]
    assert ext.will_fail and [m["mangled"] for m in ext.missing] == [OLD]
    assert ext.missing[0]["demangled"] == ("c10::cuda::c10_cuda_check_implementation(int, char const*, "
                                           "char const*, unsigned int, bool)")
    assert ext.missing[0]["instead"] == ["c10::cuda::c10_cuda_check_implementation(int, char const*, "
                                         "char const*, int, bool)"]
    assert not real["old"]["ok"] and f"undefined symbol: {OLD}" in real["old"]["error"]


def test_other_cxx11_abi_predicts_failure(scanned):
    _s, _c, py, torch, _f, exts, real = scanned
    ext = exts["abi"]
    assert ext.abi == "pre-cxx11" and torch.cxx11_abi is True
    assert [m["mangled"] for m in ext.missing] == ["_ZN3c105checkERKSs"]
    msg, _details = B.explain(ext, torch, py)
    assert "built with the pre-cxx11 C++ ABI, torch 2.9.0+cpu uses the cxx11 ABI" in msg
    assert "it needs c10::check(std::basic_string<char" in msg
    assert not real["abi"]["ok"] and "undefined symbol: _ZN3c105checkERKSs" in real["abi"]["error"]


def test_absent_library_predicts_failure(scanned):
    *_, exts, real = scanned
    ext = exts["missing"]
    assert [u["name"] for u in ext.unresolved] == ["libabsent.so"] and not ext.missing
    assert "ld.so cache" in ext.unresolved[0]["searched"]
    assert not real["missing"]["ok"] and "libabsent.so: cannot open shared object file" in real["missing"]["error"]


def test_every_prediction_matches_the_real_load(scanned):
    *_, exts, real = scanned
    assert {k: not e.will_fail for k, e in exts.items()} == {k: r["ok"] for k, r in real.items()}


def test_check_reports_what_will_happen_and_why(scanned, tmp_path):
    system, ctx, py, torch, facts, *_ = scanned
    from envdoctor.facts.host import probe_host
    r = B.extensions(facts, torch, py, GpuFacts(None), probe_host(linux_box(tmp_path / "h"), ctx))
    assert r.status == Status.FAIL and r.message == "3 compiled extension(s) will fail to load"
    msgs = sorted(i.message for i in r.items)
    assert msgs[0].startswith("loading fakeext/ext_abi.so will fail: built with the pre-cxx11 C++ ABI")
    assert msgs[1] == "loading fakeext/ext_missing.so will fail: libabsent.so not found"
    assert msgs[2] == ("loading fakeext/ext_old.so will fail: it needs c10::cuda::c10_cuda_check_implementation(int, "
                       "char const*, char const*, unsigned int, bool), which torch 2.9.0+cpu does not export")


def test_second_scan_comes_from_the_cache(scanned):
    system, ctx, py, torch, first, *_ = scanned
    again = probe_binaries(system, ctx, py, torch)
    assert again.from_cache == 4 and [e.missing for e in again.extensions] == [e.missing for e in first.extensions]


def test_crash_during_real_loading_names_the_culprit_and_loads_the_rest(tmp_path, scanned):
    *_, exts, _real = scanned
    ok_lib = exts["ok"].path
    bomb = tmp_path / "bomb.so"
    src = tmp_path / "bomb.c"
    src.write_text("#include <signal.h>\n__attribute__((constructor)) static void boom(void) { raise(SIGSEGV); }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(bomb), str(src)], check=True)
    ctx = Context(python=sys.executable, python_reason="t", smoke_timeout=30)
    out = load_for_real(System(), ctx, [{"path": str(bomb), "module": None}, {"path": ok_lib, "module": None}], False)
    assert out[str(bomb)]["ok"] is False and "signal 11" in out[str(bomb)]["error"]
    assert out[ok_lib]["ok"] is True


def test_gnu_hash_lookup_agrees_with_the_full_table(scanned):
    *_, exts, _ = scanned
    lib = exts["ok"].path.rsplit("/fakeext/", 1)[0] + "/torch/lib/libc10.so"
    with ElfFile(lib) as elf:
        defined, _ = elf.dynamic_symbols()
        assert defined and all(elf.exports(n) for n in defined)
        assert not elf.exports(OLD) and not elf.exports("no_such_symbol")


def test_torch_extension_built_for_another_cuda_major_cannot_work():
    from envdoctor.facts.binaries import _cuda_conflict
    from envdoctor.facts.torch_build import TorchFacts
    cu13 = TorchFacts(True, "2.11.0+cu130", "cu130", "13.0")
    needed = ["libc10.so", "libtorch.so", "libcudart.faf08d9a.so.12", "libstdc++.so.6"]
    major, conflicts = _cuda_conflict(needed, cu13)
    assert major == 12 and conflicts[0].startswith("built for CUDA 12; torch 2.11.0+cu130 uses CUDA 13")
    from envdoctor.facts.binaries import Extension
    ext = Extension("torchvision", "0.25.0", "/s/torchvision/image.so", "torchvision/image.so", None, needed,
                    cuda_major=12, conflicts=conflicts)
    assert not ext.will_fail  # it loads (its own CUDA 12 runtime): a warning, not a predicted load failure
    assert _cuda_conflict(["libc10.so", "libcudart.so.13"], cu13) == (13, [])
    assert _cuda_conflict(["libcudart.so.12"], cu13) == (12, [])  # not a torch extension (cupy): its own business
    cpu = TorchFacts(True, "2.13.0+cpu", "cpu", None)
    assert _cuda_conflict(["libtorch.so", "libcudart.so.13"], cpu)[1] == ["built for CUDA 13; torch 2.13.0+cpu has no CUDA"]


def test_shadowed_distribution_is_never_loaded(tmp_path):
    """torchvision 0.25 first on sys.path shadows 0.26: 0.26's libraries are never imported."""
    from elfbuild import C10, gxx
    from envbuild import dist, pyenv
    from envdoctor.facts.torch_build import TorchFacts
    from envdoctor.system import System as RealSystem
    torch_dir = tmp_path / "torch"
    (torch_dir / "lib").mkdir(parents=True)
    gxx(torch_dir / "lib" / "libc10.so", C10)
    for site in ("a", "b"):
        (tmp_path / site / "tv").mkdir(parents=True)
        gxx(tmp_path / site / "tv" / "_C.so", "int f() { return 0; }\n", f"-L{torch_dir / 'lib'}", "-Wl,--no-as-needed",
            "-lc10")
        info = tmp_path / site / f"tv-{site}.dist-info"
        info.mkdir()
        (info / "RECORD").write_text("tv/_C.so,,\n")
    first = dist("tv", "0.25.0", site=str(tmp_path / "a"))
    first.path = str(tmp_path / "a" / "tv-a.dist-info")
    second = dist("tv", "0.26.0", site=str(tmp_path / "b"))
    second.path = str(tmp_path / "b" / "tv-b.dist-info")
    torch = TorchFacts(True, "2.11.0+cu130", "cu130", "13.0", path=str(torch_dir))
    sysm = RealSystem(env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    facts = probe_binaries(sysm, Context("/x/python", "t"), pyenv(first, second), torch)
    by_version = {e.version: e for e in facts.extensions}
    assert by_version["0.25.0"].unused is None
    assert by_version["0.26.0"].unused == "shadowed by tv 0.25.0 earlier on sys.path: never imported"
