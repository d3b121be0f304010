"""The fat-binary arch reader on real binaries: a golden library nvcc built (tests/data, no toolkit
needed), CUDA code compiled by nvcc here when there is one, and libraries built by gcc; the torch facts
cache."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from torchfake import c10_library, fatbin_library, install_torch

from envdoctor.context import Context
from envdoctor.elf import ElfError, ElfFile
from envdoctor.facts.torch_build import probe_torch
from envdoctor.fatbin import read_archs
from fakes import linux_box
from envbuild import SITE, dist, pyenv

KERNEL = "__global__ void add(float *a, float b) { a[threadIdx.x] += b; }\n" \
         "void launch(float *a) { add<<<1, 32>>>(a, 1.0f); }\n"
GOLDEN = Path(__file__).parent / "data" / "golden-fatbin" / "libgolden.so"  # see tests/data/README.md
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on this machine")


def nvcc_build(tmp_path, *gencodes):
    src = tmp_path / "k.cu"
    src.write_text(KERNEL)
    out = tmp_path / "libk.so"
    args = [f"-gencode=arch={a},code={c}" for a, c in gencodes]
    subprocess.run(["nvcc", "-shared", "-Xcompiler", "-fPIC", *args, str(src), "-o", str(out)], check=True,
                   capture_output=True)
    return out


def test_reads_the_golden_nvcc_library():
    """nvcc 13.0's own output: 3 containers for sm_80, sm_90a (arch-specific flag), PTX compute_90, and
    one for sm_89 alone. The raw union, and the build archs as the doctor reports them for torch."""
    from envdoctor.fatbin import archs_of
    assert read_archs(str(GOLDEN)).to_dict() == {"sass": ["sm_80", "sm_89", "sm_90a"], "ptx": ["compute_90"]}
    archs = archs_of(ElfFile(GOLDEN))
    assert archs.containers == 4
    assert archs.counts == {"sm_80": 3, "sm_90a": 3, "compute_90": 3, "sm_89": 1}


def test_torch_facts_from_the_golden_library(tmp_path):
    system = linux_box(tmp_path)
    install_torch(system.root, SITE, "2.11.0+cu130", "13.0", ["sm_75"], [])
    shutil.copy(GOLDEN, system.path(f"{SITE}/torch/lib/libtorch_cuda.so"))  # the real format replaces the fake
    t = probe_torch(system, Context("/venv/bin/python", "t"), pyenv(dist("torch", "2.11.0+cu130")))
    assert t.archs == {"sass": ["sm_80", "sm_90a"], "ptx": ["compute_90"], "extra": ["sm_89"]}


@needs_nvcc
def test_reads_sass_ptx_and_arch_specific_code_from_nvcc_output(tmp_path):
    lib = nvcc_build(tmp_path, ("compute_80", "sm_80"), ("compute_86", "sm_86"), ("compute_90", "compute_90"),
                     ("compute_90a", "sm_90a"), ("compute_120", "sm_120"), ("compute_120", "compute_120"))
    archs = read_archs(str(lib))
    assert archs.to_dict() == {"sass": ["sm_80", "sm_86", "sm_90a", "sm_120"], "ptx": ["compute_90", "compute_120"]}


@needs_nvcc
def test_ptx_only_and_single_arch(tmp_path):
    archs = read_archs(str(nvcc_build(tmp_path, ("compute_75", "compute_75"))))
    assert archs.to_dict() == {"sass": [], "ptx": ["compute_75"]}
    (tmp_path / "b").mkdir()
    archs = read_archs(str(nvcc_build(tmp_path / "b", ("compute_100", "sm_100"))))
    assert archs.to_dict() == {"sass": ["sm_100"], "ptx": []}


def test_gcc_built_fatbin_section_and_plain_libraries():
    assert read_archs(str(fatbin_library(["sm_75", "sm_120"], ["compute_120"]))).to_dict() == {
        "sass": ["sm_75", "sm_120"], "ptx": ["compute_120"]}
    assert read_archs(str(c10_library())).to_dict() == {"sass": [], "ptx": []}


def test_not_elf_is_a_clean_error(tmp_path):
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not an elf file at all, just text" * 4)
    with pytest.raises(ElfError, match="not an ELF file"):
        ElfFile(junk)


def test_cxx11_abi_detection(tmp_path):
    system = linux_box(tmp_path)
    install_torch(system.root, SITE, "2.5.1+cu124", "12.4", ["sm_90"], [], cxx11=False)
    t = probe_torch(system, Context("/venv/bin/python", "t"), pyenv(dist("torch", "2.5.1+cu124")))
    assert t.cxx11_abi is False


def test_scan_is_cached_by_path_size_and_mtime(tmp_path):
    system = linux_box(tmp_path)
    install_torch(system.root, SITE, "2.8.0+cu128", "12.8", ["sm_120"], [])
    py, ctx = pyenv(dist("torch", "2.8.0+cu128")), Context("/venv/bin/python", "t")
    assert probe_torch(system, ctx, py).archs["sass"] == ["sm_120"]
    cache_file = system.path("/home/u/.cache/envdoctor/elf-scan-v2.json")
    text = cache_file.read_text()
    assert "libtorch_cuda.so" in text
    cache_file.write_text(text.replace('"sm_120"', '"sm_999"'))  # proves the second run reads the cache
    assert probe_torch(system, ctx, py).archs["sass"] == ["sm_999"]
    lib = system.path(f"{SITE}/torch/lib/libtorch_cuda.so")
    later = time.time() + 5
    os.utime(lib, (later, later))  # a changed file is scanned again
    assert probe_torch(system, ctx, py).archs["sass"] == ["sm_120"]


def test_build_archs_are_the_ones_in_most_containers(tmp_path):
    """As in torch 2.11's libtorch_cuda.so: 444 containers carry sm_75…sm_120; a few add sm_89 or sm_90a."""
    system = linux_box(tmp_path)
    install_torch(system.root, SITE, "2.11.0+cu130", "13.0", ["sm_80", "sm_90"], [], copies=6,
                  special=[["sm_90a"], ["sm_89", "sm_90a"]])
    t = probe_torch(system, Context("/venv/bin/python", "t"), pyenv(dist("torch", "2.11.0+cu130")))
    assert t.archs == {"sass": ["sm_80", "sm_90"], "ptx": [], "extra": ["sm_89", "sm_90a"]}
