"""Deep-mode smoke tests: real subprocesses that pass, crash with a signal, hang, or print garbage."""

import venv

from gpufake import H200, gpu_box, nvml

from envdoctor.checks import deep as D
from envdoctor.context import Context
from envdoctor.facts.gpu import probe_gpu
from envdoctor.facts.smoke import SmokeResult, run_smoke
from envdoctor.facts.torch_build import TorchFacts
from envdoctor.model import Status
from envdoctor.system import System



def fake_python(tmp_path, body: str) -> str:
    exe = tmp_path / "python"
    exe.write_text("#!/bin/sh\n" + body + "\n")
    exe.chmod(0o755)
    return str(exe)


def ctx(python, timeout=10.0):
    return Context(python=python, python_reason="test", smoke_timeout=timeout)


def test_segfault_is_a_failure_naming_the_signal(tmp_path):
    py = fake_python(tmp_path, "echo 'Fatal Python error: Segmentation fault' >&2\nkill -SEGV $$")
    r = run_smoke(System(), ctx(py), "bitsandbytes")
    assert r.status == "fail" and r.message == "crashed with SIGSEGV"
    assert r.details == ["Fatal Python error: Segmentation fault"]


def test_hang_is_a_failure_naming_the_timeout(tmp_path):
    py = fake_python(tmp_path, "echo 'loading kernels' >&2\nsleep 30")
    r = run_smoke(System(), ctx(py, timeout=0.5), "flash_attn")
    assert r.status == "fail" and r.message == "hung: no answer within 0.5 s"


def test_garbage_output(tmp_path):
    py = fake_python(tmp_path, "echo hello\necho 'ImportError: boom' >&2\nexit 3")
    r = run_smoke(System(), ctx(py), "torch")
    assert r.status == "fail" and r.message == "exited with code 3 without a result" and r.details == ["ImportError: boom"]


def test_real_interpreter_runs_the_stage_and_skips_what_is_missing(tmp_path):
    # A bare venv: flash_attn is missing there whatever the machine running the tests has installed.
    venv.EnvBuilder(with_pip=False).create(tmp_path / "bare")
    r = run_smoke(System(), ctx(str(tmp_path / "bare" / "bin" / "python")), "flash_attn")
    assert r.status == "skip" and r.message == "flash_attn is not installed"


def test_deep_checks_turn_smoke_results_into_results(tmp_path):
    system, py = gpu_box(tmp_path, nvml("580.95.05", 13000, H200))
    gpu = probe_gpu(system, ctx("/venv/bin/python"))
    crash = SmokeResult("bitsandbytes", "fail", "crashed with SIGSEGV", ["free(): invalid pointer"])
    r = D.from_smoke(crash, py)
    assert r.status == Status.FAIL and r.remedy.command == "/venv/bin/python -m bitsandbytes"
    good = SmokeResult("torch", "ok", "CUDA init and a bf16 matmul on NVIDIA H200", seconds=2.5,
                       data={"arch_list": ["sm_75", "sm_80", "sm_90"]})
    assert D.from_smoke(good, py).message.endswith("(2.5 s)")
    torch = TorchFacts(True, "2.11.0+cu130", "cu130", "13.0",
                       archs={"sass": ["sm_75", "sm_80", "sm_90"], "ptx": [], "extra": ["sm_90a"]})
    r = D.arch_list(good, torch, gpu)
    assert r.status == Status.OK and r.details == ["a few kernels also for sm_90a"]
    torch.archs = {"sass": ["sm_80"], "ptx": []}
    assert D.arch_list(good, torch, gpu).status == Status.WARN
