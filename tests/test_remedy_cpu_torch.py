"""Remedies for packages beside a CPU-only torch, applied for real in one shared venv (torch 2.13.0+cpu,
pip against PyPI): the broken package is installed as a user would have it, the finding is read, the
printed remedy (run by a shell) or `envdoctor fix` is applied, and the re-check is clean *and* the package
really works afterwards — or, where nothing can work (flash-attn without a CUDA torch), no fix is offered.

- a CUDA build of torchao (PyPI's platform wheel) beside the CPU torch: its pure-Python wheel, never the
  same CUDA build again;
- bitsandbytes 0.42.0 on a machine without CUDA: named for what it is (its CPU library has no 4-bit), and
  replaced by the first release with 4-bit on the CPU;
- flash-attn beside the CPU torch: says a CUDA torch is needed; `fix` plans nothing."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.version import Version
from envbuild import pyenv
from wheels import build_wheel

from envdoctor.cpu_torch import BNB_CPU_4BIT

pytestmark = pytest.mark.slow


def pip(py: Path, *args: str) -> None:
    subprocess.run([str(py), "-m", "pip", "install", "-q", *args], check=True, timeout=900)


def freeze(py: Path) -> dict[str, str]:
    out = subprocess.run([str(py), "-m", "pip", "freeze", "--all"], capture_output=True, text=True, check=True)
    return {line.split("==")[0].split(" @ ")[0].lower(): line for line in out.stdout.splitlines() if line}


@contextlib.contextmanager
def restored_after(py: Path):
    """The shared venv as it was: what a test added is uninstalled afterwards (pass or fail)."""
    before = freeze(py)
    try:
        yield
    finally:
        added = sorted(set(freeze(py)) - set(before))
        if added:
            subprocess.run([str(py), "-m", "pip", "uninstall", "-q", "-y", *added], check=True)
        assert freeze(py) == before


def envdoctor(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home), "NO_COLOR": "1"}
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run([sys.executable, "-m", "envdoctor", *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=1800)


def results(home: Path, py: Path, *ids: str) -> dict[str, dict]:
    res = envdoctor(home, "check", "--json", "--python", str(py), "--only", *ids)
    return {r["id"]: r for r in json.loads(res.stdout)["results"]}


def run_py(py: Path, code: str) -> str:
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def apply(how: str, home: Path, py: Path, remedy: dict) -> None:
    if how == "printed":
        subprocess.run(remedy["command"], shell=True, check=True, timeout=1800, capture_output=True)
    else:
        res = envdoctor(home, "fix", remedy["fix_id"], "--yes", "--python", str(py))
        assert res.returncode == 0 and f"[✓] {remedy['fix_id']}: fixed" in res.stdout, res.stdout + res.stderr


# --- a CUDA build of torchao beside the CPU torch -----------------------------------------------------------

TORCHAO_USE = ("import torch, torchao\n"
               "from torchao.quantization import Int8WeightOnlyConfig, quantize_\n"
               "m = torch.nn.Sequential(torch.nn.Linear(64, 32))\n"
               "quantize_(m, Int8WeightOnlyConfig())\n"
               "print(torchao.__version__, tuple(m(torch.randn(2, 64)).shape))\n")


@pytest.mark.parametrize("how", ["printed", "fix"])
def test_torchao_cuda_build_beside_cpu_torch_is_replaced_by_its_pure_python_wheel(cpu_torch_venv, tmp_path, how):
    py = cpu_torch_venv
    with restored_after(py):
        pip(py, "--no-deps", "torchao==0.16.0")          # PyPI's platform wheel: links libcudart, libc10_cuda
        r = results(tmp_path, py, "binaries.extensions", "packages.companions")
        ext = r["binaries.extensions"]
        assert ext["status"] == "fail"
        bad = [i for i in ext["items"] if i["status"] == "fail"]
        assert bad and all("torchao 0.16.0 is a CUDA build; torch 2.13.0+cpu is CPU-only" in i["message"]
                           for i in bad)
        remedy = bad[0]["remedy"]
        assert remedy["fix_id"] == "packages.pure-wheel" and remedy["params"] == {"specs": ["torchao==0.18.0"]}
        assert "0.16.0" not in remedy["command"] and "pure-wheel.sh torchao==0.18.0" in remedy["command"]
        assert "download.pytorch.org/whl/cpu" in remedy["text"] and "not reachable" in remedy["text"]
        # The companions finding gives the same remedy (not PyPI's CUDA build of the current torchao).
        assert r["packages.companions"]["items"][0]["remedy"]["command"] == remedy["command"]
        apply(how, tmp_path, py, remedy)
        again = results(tmp_path, py, "binaries.extensions", "packages.companions")
        assert {k: v["status"] for k, v in again.items()} == {"binaries.extensions": "ok",
                                                              "packages.companions": "ok"}, again
        assert run_py(py, TORCHAO_USE).splitlines()[-1] == "0.18.0 (2, 32)"


# --- bitsandbytes 0.42.0 on a machine without CUDA ------------------------------------------------------------

BNB_USE = ("import torch, bitsandbytes as bnb, bitsandbytes.functional as F\n"
           "q, state = F.quantize_4bit(torch.randn(64, 64), quant_type='nf4')\n"
           "layer = bnb.nn.Linear4bit(64, 32, compute_dtype=torch.float32, quant_type='nf4').to('cpu')\n"
           "print(bnb.__version__, tuple(layer(torch.randn(2, 64)).shape))\n")


@pytest.mark.parametrize("how", ["printed", "fix"])
def test_old_bitsandbytes_on_the_cpu_is_named_for_its_missing_4bit_and_upgraded(cpu_torch_venv, tmp_path, how):
    py = cpu_torch_venv
    with restored_after(py):
        pip(py, "scipy")                                   # 0.42.0 imports it
        pip(py, "--no-deps", "bitsandbytes==0.42.0")
        broken = subprocess.run([str(py), "-c", BNB_USE], capture_output=True, text=True, timeout=600)
        assert broken.returncode != 0 and "NotImplementedError" in broken.stderr   # the real failure
        r = results(tmp_path, py, "binaries.extensions")["binaries.extensions"]
        assert r["status"] == "fail"
        assert [i["message"] for i in r["items"] if i["status"] == "fail"] == [
            "bitsandbytes 0.42.0 has no 4-bit support on the CPU: without CUDA it loads libbitsandbytes_cpu.so, "
            "which cannot quantize to 4 bit"]                # its CUDA libraries are never loaded: not blamed
        remedy = r["items"][0]["remedy"]
        assert remedy["fix_id"] == "packages.install-newer" and f"'bitsandbytes>={BNB_CPU_4BIT}'" in remedy["command"]
        assert "0.42.0" not in remedy["command"]
        apply(how, tmp_path, py, remedy)
        again = results(tmp_path, py, "binaries.extensions")["binaries.extensions"]
        assert again["status"] == "ok", again
        version, shape = run_py(py, BNB_USE).splitlines()[-1].split(" ", 1)
        assert Version(version) >= Version(BNB_CPU_4BIT) and shape == "(2, 32)"
        assert run_py(py, "import torch; print(torch.__version__)") == "2.13.0+cpu"


# --- flash-attn beside the CPU torch --------------------------------------------------------------------------

def test_flash_attn_beside_a_cpu_torch_says_a_cuda_torch_is_needed_and_fix_offers_no_build(cpu_torch_venv,
                                                                                           tmp_path):
    """A flash-attn release wheel's metadata (a fake dist: this machine cannot have a CUDA build that
    matters) beside the real CPU torch: a rebuild would stop at 'CUDA_HOME environment variable is not
    set', so none is offered."""
    py = cpu_torch_venv
    with restored_after(py):
        wheel = build_wheel(tmp_path / "w", "flash-attn", "2.8.3+cu12torch2.8cxx11abiTRUE")
        pip(py, "--no-deps", "--no-index", str(wheel))
        r = results(tmp_path, py, "binaries.flash_attn")["binaries.flash_attn"]
        assert r["status"] in ("warn", "fail") and "flash-attn 2.8.3+cu12torch2.8cxx11abiTRUE" in r["message"]
        remedy = r["remedy"]
        assert remedy["command"] is None and remedy["fix_id"] is None
        assert "needs a CUDA build of torch" in remedy["text"] and "no automatic fix" in remedy["text"]
        before = freeze(py)
        res = envdoctor(tmp_path, "fix", "flash-attn.rebuild", "--yes", "--python", str(py))
        assert res.returncode == 0 and "Nothing to fix" in res.stdout, res.stdout + res.stderr
        assert "flash-attn.sh" not in res.stdout and freeze(py) == before


def test_the_printed_flash_attn_command_runs_as_printed(cpu_torch_venv, tmp_path):
    """The printed form of the flash-attn fix (its plan's step as a shell line) runs as printed: here its
    release-wheel route, with a local wheel as the release URL (no CUDA build can be made on this machine),
    and torch stays pinned through TORCH_PIN."""
    from envdoctor.repair.plan import plan_flash_attn, step_command
    py = cpu_torch_venv
    with restored_after(py):
        wheel = build_wheel(tmp_path / "w", "flash-attn", "2.8.3")
        params = {"version": "2.8.3", "wheel_url": str(wheel), "max_jobs": 1, "nvcc_threads": 1, "archs": "",
                  "torch_pin": "torch==2.13.0+cpu"}
        python = pyenv(executable=str(py))
        command = step_command(plan_flash_attn([params], python, None, None).steps[0], python)
        assert command.startswith(f"PYTHON={py} FA_VERSION=2.8.3 ") and "TORCH_PIN=torch==2.13.0+cpu bash " in command
        subprocess.run(command, shell=True, check=True, timeout=600, capture_output=True)
        assert run_py(py, "import flash_attn, torch; print(flash_attn.__version__, torch.__version__)") == \
            "2.8.3 2.13.0+cpu"


# --- a damaged torch (a file its RECORD lists is gone) ---------------------------------------------------------

def test_damaged_torch_is_reinstalled_at_the_same_version_by_fix(cpu_torch_venv, tmp_path):
    """A file of torch deleted (what a disk cleaner or a half-copied venv leaves): `import torch` fails;
    packages.metadata names the missing file; `envdoctor fix torch.reinstall` reinstalls the same version and
    build (--force-reinstall --no-deps, from pip's own sources: here the local wheel pip is configured with),
    and torch imports and runs again. The printed command is the same request's pip call
    (tests/test_remedy_requests.py proves the two equal)."""
    py = cpu_torch_venv
    site = Path(run_py(py, "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
    rel = "torch/nn/modules/pixelshuffle.py"
    record = next(site.glob("torch-*.dist-info")) / "RECORD"
    assert any(line.startswith(rel + ",") for line in record.read_text().splitlines())
    victim = site / rel
    try:
        victim.unlink()
        broken = subprocess.run([str(py), "-c", "import torch"], capture_output=True, text=True, timeout=600)
        assert broken.returncode != 0 and "pixelshuffle" in broken.stderr          # the real failure
        r = results(tmp_path, py, "packages.metadata")["packages.metadata"]
        bad = [i for i in r["items"] if i["status"] == "fail"]
        assert r["status"] == "fail" and [i["message"] for i in bad] == [
            f"torch 2.13.0+cpu: damaged install: missing 1 file(s) its RECORD lists: {rel}"]
        remedy = bad[0]["remedy"]
        assert remedy["fix_id"] == "torch.reinstall"
        assert remedy["params"] == {"specs": ["torch==2.13.0+cpu"], "index_url": None, "force": True}
        assert remedy["command"] == f"{py} -m pip install --force-reinstall --no-deps 'torch==2.13.0+cpu'"
        apply("fix", tmp_path, py, remedy)
        assert results(tmp_path, py, "packages.metadata")["packages.metadata"]["status"] == "ok"
        assert run_py(py, "import torch; print(torch.__version__, tuple(torch.nn.PixelShuffle(2)("
                          "torch.zeros(1, 4, 2, 2)).shape))") == "2.13.0+cpu (1, 1, 4, 4)"
    finally:
        if not victim.exists():   # the shared venv as it was, whatever failed above
            pip(py, "--force-reinstall", "--no-deps", "torch==2.13.0")
