"""GPU checks on fake machines: the acceptance scenarios of the GPU issue, plus the edges."""

import pytest
from gpufake import CU13_SASS, CU126_SASS, H200, RTX4090, RTX5090, gpu_box, nvml, smi_csv

from envdoctor.checks import gpu as G
from envdoctor.context import Context
from envdoctor.facts.gpu import probe_gpu
from envdoctor.facts.host import probe_host
from envdoctor.facts.toolkit import probe_toolkit
from envdoctor.facts.torch_build import probe_torch
from envdoctor.model import Status
from envdoctor.system import CommandResult

CTX = Context(python="/venv/bin/python", python_reason="test")
ALL = ("driver", "devices", "memory", "torch_build", "driver_cuda", "arch", "bf16", "nvcc")


def judge(system, py):
    gpu, torch, host, tk = (probe_gpu(system, CTX), probe_torch(system, CTX, py), probe_host(system, CTX),
                            probe_toolkit(system, CTX))
    return {
        "driver": G.driver(gpu), "devices": G.devices(gpu), "memory": G.memory(gpu),
        "torch_build": G.torch_build(gpu, torch, py), "driver_cuda": G.driver_cuda(gpu, torch, host, py),
        "arch": G.arch(gpu, torch, py), "bf16": G.bf16(gpu), "nvcc": G.nvcc(tk, torch, py, gpu),
    }


def statuses(results):
    return {k: r.status.value for k, r in results.items()}


def test_h200_cu130_is_healthy(tmp_path):
    system, py = gpu_box(tmp_path, nvml("580.95.05", 13000, H200), ("2.11.0+cu130", "13.0", CU13_SASS, []),
                         nvcc="13.0", companions=[("flash-attn", "2.8.3")])
    res = judge(system, py)
    assert statuses(res) == {k: "ok" for k in ALL}
    assert res["driver"].message == "driver 580.95.05, CUDA ≤ 13.0, 1 GPU (via nvml)"
    assert res["arch"].message.startswith("GPU 0 NVIDIA H200 (sm_90) runs sm_90")
    assert res["torch_build"].message == "torch 2.11.0+cu130 (CUDA 13.0, cxx11 ABI)"
    assert "nvcc 13.0.1" in res["nvcc"].message


def test_rtx5090_with_torch_26_cu126_fails_with_the_exact_command(tmp_path):
    system, py = gpu_box(tmp_path, nvml("570.124.06", 12080, RTX5090), ("2.6.0+cu126", "12.6", CU126_SASS, []),
                         companions=[("torchvision", "0.21.0+cu126")])
    res = judge(system, py)
    arch = res["arch"]
    assert arch.status == Status.FAIL
    assert arch.message == "NVIDIA GeForce RTX 5090 (sm_120) is not supported by torch 2.6.0+cu126"
    assert arch.remedy.command == ("/venv/bin/python -m pip install 'torch==2.7.1' 'torchvision==0.22.*' "
                                   "--index-url https://download.pytorch.org/whl/cu128")
    assert "no kernel image is available" in " ".join(arch.items[0].details)
    assert res["driver_cuda"].status == Status.OK  # the driver is fine; the build is not


def test_driver_550_with_cu128_torch_warns(tmp_path):
    system, py = gpu_box(tmp_path, nvml("550.54.14", 12040, RTX4090), ("2.8.0+cu128", "12.8", CU13_SASS, []))
    r = judge(system, py)["driver_cuda"]
    assert r.status == Status.WARN
    assert r.message == "driver 550.54.14 (CUDA 12.4) is older than torch's CUDA 12.8"
    assert "≥ 570.26" in r.remedy.text


def test_driver_a_major_too_old_fails(tmp_path):
    system, py = gpu_box(tmp_path, nvml("535.183.01", 12020, H200), ("2.11.0+cu130", "13.0", CU13_SASS, []))
    r = judge(system, py)["driver_cuda"]
    assert r.status == Status.FAIL
    assert r.message == "driver 535.183.01 supports CUDA ≤ 12.2, but torch 2.11.0+cu130 needs CUDA 13.0"
    assert r.remedy.text.startswith("Upgrade the driver to ≥ 580.65.06, or install the build for this driver.")
    assert r.remedy.command == ("/venv/bin/python -m pip install 'torch==2.11.0' "
                                "--index-url https://download.pytorch.org/whl/cu126")


def test_cpu_torch_on_a_gpu_host_fails(tmp_path):
    system, py = gpu_box(tmp_path, nvml("580.95.05", 13000, H200), ("2.8.0+cpu", None, [], []))
    res = judge(system, py)
    r = res["torch_build"]
    assert r.status == Status.FAIL and "CPU-only build" in r.message
    assert r.remedy.command == ("/venv/bin/python -m pip install 'torch==2.8.0' "
                                "--index-url https://download.pytorch.org/whl/cu129")
    assert res["arch"].status == Status.SKIP and res["driver_cuda"].status == Status.SKIP


def test_no_gpu_skips_cleanly(tmp_path):
    system, py = gpu_box(tmp_path, None, ("2.8.0+cpu", None, [], []))
    res = judge(system, py)
    assert statuses(res) == {k: "skip" for k in ALL}
    assert {r.message for r in res.values()} == {"no NVIDIA GPU found"}
    assert res["driver"].details == ["NVML: Driver Not Loaded", "nvidia-smi: not found"]


def test_nvml_missing_falls_back_to_nvidia_smi(tmp_path):
    row = "0, NVIDIA GeForce RTX 4090, GPU-abc, 8.9, 24564, 23000, 1564, [N/A], 560.35.03"
    system, py = gpu_box(tmp_path, None, ("2.8.0+cu126", "12.6", CU126_SASS, []),
                         commands={"/usr/bin/nvidia-smi": smi_csv(row)})
    system.write("/usr/bin/nvidia-smi", "#!/bin/sh\n")
    system.path("/usr/bin/nvidia-smi").chmod(0o755)
    gpu = probe_gpu(system, CTX)
    assert gpu.source == "nvidia-smi" and gpu.driver == "560.35.03" and gpu.cuda_driver == (12, 6)
    assert gpu.gpus[0].cc == (8, 9) and gpu.gpus[0].mem_total == 24564 * 2 ** 20 and gpu.gpus[0].mig is None
    res = judge(system, py)
    assert res["driver"].message.endswith("(via nvidia-smi)") and res["arch"].status == Status.OK
    assert "runs sm_86" in res["arch"].message


def test_wsl_prefers_the_windows_nvidia_smi(tmp_path):
    row = "0, NVIDIA GeForce RTX 5090, GPU-abc, 12.0, 32607, 30000, 2607, [N/A], 576.02"
    system, py = gpu_box(tmp_path, None, commands={"/usr/lib/wsl/lib/nvidia-smi": smi_csv(row)})
    system.write("/proc/sys/kernel/osrelease", "5.15.167.4-microsoft-standard-WSL2\n")
    for p in ("/usr/lib/wsl/lib/nvidia-smi", "/usr/bin/nvidia-smi"):
        system.write(p, "#!/bin/sh\n")
        system.path(p).chmod(0o755)
    gpu = probe_gpu(system, CTX)
    assert gpu.source == "nvidia-smi" and system.ran[0][0] == "/usr/lib/wsl/lib/nvidia-smi"


def test_hanging_nvidia_smi_is_a_timeout_result(tmp_path):
    hung = CommandResult(("nvidia-smi",), None, "", "", 10.0, timed_out=True)
    system, py = gpu_box(tmp_path, None, commands={"/usr/bin/nvidia-smi": hung})
    system.write("/usr/bin/nvidia-smi", "#!/bin/sh\n")
    system.path("/usr/bin/nvidia-smi").chmod(0o755)
    r = judge(system, py)["driver"]
    assert r.status == Status.FAIL and r.message == "nvidia-smi hangs: the driver may be wedged"
    assert "did not answer within 10 s" in r.details[-1] and "dmesg" in r.remedy.command


def test_memory_held_by_other_processes(tmp_path):
    busy = {**H200, "processes": [{"pid": 4242, "used": 60 * 2 ** 30}], "mem_used": 61 * 2 ** 30}
    system, py = gpu_box(tmp_path, nvml("580.95.05", 13000, busy))
    system.write("/proc/4242/comm", "vllm\n")
    r = judge(system, py)["memory"]
    assert r.status == Status.WARN and r.items[0].details == ("pid 4242 vllm: 60.0 GiB",)


def test_envdoctors_own_smoke_process_is_not_another_process(tmp_path):
    busy = {**H200, "processes": [{"pid": 77, "used": 2 * 2 ** 30}]}
    system, py = gpu_box(tmp_path, nvml("580.95.05", 13000, busy))
    system.write("/proc/77/cmdline", "python\0-c\0...\0--envdoctor-smoke\0torch\0")
    assert judge(system, py)["memory"].status == Status.OK


def test_mig_and_bf16(tmp_path):
    old = {**H200, "name": "Tesla T4", "cc": [7, 5], "mig": False}
    system, py = gpu_box(tmp_path / "a", nvml("580.95.05", 13000, old))
    r = judge(system, py)["bf16"]
    assert r.status == Status.WARN and "fp16" in r.remedy.text
    system, py = gpu_box(tmp_path / "b", nvml("580.95.05", 13000, {**H200, "mig": True}))
    assert judge(system, py)["devices"].status == Status.WARN


def test_ptx_only_coverage_warns(tmp_path):
    system, py = gpu_box(tmp_path, nvml("580.95.05", 13000, RTX5090), ("2.9.0+cu128", "12.8", ["sm_90"], ["compute_90"]))
    r = judge(system, py)["arch"]
    assert r.status == Status.WARN and "only runs through PTX JIT of compute_90" in r.message


@pytest.mark.parametrize("nvcc,flash,expected", [
    (None, False, "warn"), (None, True, "ok"), ("12.4", False, "fail"), ("12.4", True, "warn")])
def test_nvcc_rules(tmp_path, nvcc, flash, expected):
    comps = [("flash-attn", "2.8.3")] if flash else []
    system, py = gpu_box(tmp_path, nvml("580.95.05", 13000, H200), ("2.11.0+cu130", "13.0", CU13_SASS, []),
                         nvcc=nvcc, companions=comps)
    assert judge(system, py)["nvcc"].status.value == expected


def test_nvcc_too_old_for_the_gpu_arch(tmp_path):
    system, py = gpu_box(tmp_path, nvml("570.124.06", 12080, RTX5090), ("2.8.0+cu128", "12.8", CU13_SASS, []),
                         nvcc="12.6")
    r = judge(system, py)["nvcc"]
    assert r.status == Status.FAIL and "sm_120 needs nvcc ≥ 12.8" in r.details


def test_torch_facts_from_disk(tmp_path):
    system, py = gpu_box(tmp_path, None, ("2.7.0+cu126", "12.6", ["sm_80", "sm_90a"], ["compute_90"]))
    t = probe_torch(system, CTX, py)
    assert (t.version, t.build_tag, t.cuda, t.cxx11_abi) == ("2.7.0+cu126", "cu126", "12.6", True)
    assert t.archs == {"sass": ["sm_80", "sm_90a"], "ptx": ["compute_90"], "extra": []}
    assert t.arch_libs == ["libtorch_cuda.so"]
