"""Fix plans computed on fake machines (what this machine cannot have: a Blackwell GPU)."""

import io

from envbuild import dist, pyenv
from fakes import linux_box
from gpufake import RTX5090, gpu_box, nvml

from envdoctor.assets import asset
from envdoctor.checks.binaries import flash_attn_remedy
from envdoctor.commands.fix import collect, show
from envdoctor.context import Context
from envdoctor.facts.gpu import probe_gpu
from envdoctor.facts.host import probe_host
from envdoctor.facts.torch_build import TorchFacts
from envdoctor.model import Item, Result, Status
from envdoctor.repair.plan import FIXES

CTX = Context("/venv/bin/python", "t")
TORCH = TorchFacts(True, "2.8.0+cu128", "cu128", "12.8", cxx11_abi=True)


def test_flash_attn_plan_on_a_16gb_12_core_blackwell_box(tmp_path):
    system, py = gpu_box(tmp_path, nvml("570.124.06", 12080, RTX5090), ram=16, avail=15, cpus=12)
    host, gpu = probe_host(system, CTX), probe_gpu(system, CTX)
    remedy = flash_attn_remedy("2.8.3", TORCH, py, gpu, host)
    # MAX_JOBS = max(1, min(12 CPUs, floor(15 GiB available / 7 GiB a job))) = 2
    assert remedy.params["max_jobs"] == 2 and remedy.params["archs"] == "120"
    plan = FIXES["flash-attn.rebuild"].planner([remedy.params], py, TORCH, system)
    out = io.StringIO()
    show(plan, py.executable, out)
    text = out.getvalue()
    assert "MAX_JOBS=2" in text and "NVCC_THREADS=2" in text and "FLASH_ATTN_CUDA_ARCHS=120" in text
    assert "--no-build-isolation" in text and "TORCH_PIN=torch==2.8.0+cu128" in text
    assert ("flash_attn-2.8.3+cu12torch2.8cxx11abiTRUE-cp311-cp311-linux_x86_64.whl") in text


def test_printed_flash_attn_remedy_is_the_fix_plan(tmp_path):
    """One source: the command the finding prints is, character for character, the shell line of the
    plan's one step that `envdoctor fix flash-attn.rebuild` shows and runs (script + variables)."""
    system, py = gpu_box(tmp_path, nvml("570.124.06", 12080, RTX5090), ram=64, avail=60, cpus=16)
    remedy = flash_attn_remedy("2.8.3", TORCH, py, probe_gpu(system, CTX), probe_host(system, CTX))
    plan = FIXES["flash-attn.rebuild"].planner([remedy.params], py, TORCH, system)
    assert len(plan.steps) == 1 and plan.pin_torch is None     # the pin travels in the step (TORCH_PIN)
    out = io.StringIO()
    show(plan, py.executable, out)
    shown = [line.strip()[2:] for line in out.getvalue().splitlines() if line.strip().startswith("$ ")]
    assert shown == [remedy.command]
    assert remedy.command.startswith(f"PYTHON={py.executable} FA_VERSION=2.8.3 FA_WHEEL_URL=")
    assert remedy.command.endswith("TORCH_PIN=torch==2.8.0+cu128 bash " + str(asset("fixes", "flash-attn.sh")))
    assert "wheel" in remedy.text and remedy.fix_id == "flash-attn.rebuild"


def test_flash_attn_beside_a_cpu_torch_offers_no_build():
    cpu = TorchFacts(True, "2.13.0+cpu", "cpu", None, cxx11_abi=True)
    remedy = flash_attn_remedy("2.8.3", cpu, pyenv(dist("torch", "2.13.0+cpu")), None, None)  # never read
    assert remedy.command is None and remedy.fix_id is None and remedy.params is None
    assert "needs a CUDA build of torch" in remedy.text and "no automatic fix" in remedy.text


def test_a_cuda_build_without_a_cpu_build_beside_a_cpu_torch_is_not_reinstalled():
    """No CPU build exists (xformers' wheels link CUDA): no automatic fix, and never the same build again."""
    from envdoctor.checks.binaries import remedy_for
    from envdoctor.facts.binaries import Extension
    cpu = TorchFacts(True, "2.13.0+cpu", "cpu", None, cxx11_abi=True)
    ext = Extension("xformers", "0.0.33", "/site/xformers/_C.so", "xformers/_C.so", "xformers._C",
                    unresolved=[{"name": "libcudart.so.12", "searched": []}])
    remedy = remedy_for(ext, cpu, pyenv(dist("torch", "2.13.0+cpu"), dist("xformers", "0.0.33")), None, None)
    assert remedy.fix_id is None and remedy.command.endswith("-m pip uninstall -y 'xformers'")
    assert "No CPU build of xformers exists for torch 2.13.0+cpu" in remedy.text and "no automatic fix" in remedy.text
    assert "0.0.33" not in remedy.command


def test_max_jobs_never_exceeds_the_cpus(tmp_path):
    host = probe_host(linux_box(tmp_path, ram=512, avail=500, cpus=8), CTX)
    system, py = gpu_box(tmp_path / "g", nvml("570.124.06", 12080, RTX5090))
    assert flash_attn_remedy("2.8.3", TORCH, py, probe_gpu(system, CTX), host).params["max_jobs"] == 8


def test_wheel_url_pattern_is_configurable(tmp_path):
    system, py = gpu_box(tmp_path, nvml("570.124.06", 12080, RTX5090))
    remedy = flash_attn_remedy("2.8.3", TORCH, py, probe_gpu(system, CTX), probe_host(system, CTX))
    env = {"ENVDOCTOR_FLASH_ATTN_WHEEL_URL": "https://mirror.example/fa/{version}/cu{cuda_major}-{torch_minor}.whl"}
    system.env = env
    plan = FIXES["flash-attn.rebuild"].planner([remedy.params], py, TORCH, system)
    assert plan.steps[0].env["FA_WHEEL_URL"] == "https://mirror.example/fa/2.8.3/cu12-2.8.whl"


def test_collect_takes_failures_and_only_named_warnings():
    from envdoctor.model import Remedy
    from envdoctor.repair.requests import InstallSpecs, RebuildFlashAttn
    install, fa = InstallSpecs(("a>=1",)), RebuildFlashAttn("2.8.3", "", 1, 1)
    fail = Result(Status.FAIL, "x", items=[Item(Status.FAIL, "a", remedy=Remedy("cmd", request=install))])
    warn = Result(Status.WARN, "y", remedy=Remedy("cmd", request=fa))
    assert fail.items[0].remedy.fix_id == "packages.install-missing"
    assert collect([fail, warn], []) == {"packages.install-missing": [install]}
    assert collect([fail, warn], ["flash-attn.rebuild"]) == {"flash-attn.rebuild": [fa]}


def test_torch_reinstall_and_companion_plans():
    from envdoctor.repair.requests import AlignCompanions, ReinstallTorch
    py = pyenv(dist("torch", "2.6.0+cu126"), dist("torchvision", "0.21.0+cu126"))
    plan = FIXES["torch.reinstall"].planner([ReinstallTorch(("torch==2.7.1", "torchvision==0.22.*"),
                                                            "https://download.pytorch.org/whl/cu128")], py, None, None)
    assert plan.pin_torch is None and plan.steps[0].args == [
        "torch==2.7.1", "torchvision==0.22.*", "--index-url", "https://download.pytorch.org/whl/cu128"]
    plan = FIXES["packages.align-companions"].planner(
        [AlignCompanions(("torchvision==0.23.*",), "https://download.pytorch.org/whl/cu128", True)], py, TORCH, None)
    assert plan.pin_torch == "torch==2.8.0+cu128" and plan.steps[0].args == [
        "--force-reinstall", "--no-deps", "torchvision==0.23.*", "--index-url", "https://download.pytorch.org/whl/cu128"]
