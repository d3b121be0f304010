"""`--backend axolotl` decisions on fake machines: which configs axolotl can run without CUDA (as measured
with a real axolotl 0.19.0 on a CPU, see training/backends.py), the hand-off's PATH, and the CUDA builds
that pip's axolotl brings beside a CPU torch."""

import textwrap

from envdoctor.checks.train_config import axolotl_device
from envdoctor.facts.binaries import BinaryFacts, Extension
from envdoctor.facts.gpu import Gpu, GpuFacts
from envdoctor.facts.torch_build import TorchFacts
from envdoctor.facts.train_config import TrainConfigFacts
from envdoctor.model import Status
from envdoctor.training.backends import LORA_KERNELS, axolotl_env, cpu_tolerated_extensions, lora_kernels_on
from envdoctor.training.config import load
from fakes import FakeSystem

CPU_TORCH = TorchFacts(installed=True, version="2.13.0+cpu", build_tag="cpu", cuda=None)
CUDA_TORCH = TorchFacts(installed=True, version="2.8.0+cu128", build_tag="cu128", cuda="12.8")
NO_GPU = GpuFacts(source=None)
H200 = GpuFacts(source="nvml", gpus=[Gpu(0, "NVIDIA H200", (9, 0), 141 << 30, 140 << 30, 1 << 30)])
OFF = "".join(f"{k}: false\n" for k in LORA_KERNELS)


def facts(tmp_path, extra: str = "", engine: str = "peft") -> TrainConfigFacts:
    path = tmp_path / "axolotl.yaml"
    path.write_text(textwrap.dedent("""\
        base_model: ./tiny-llama
        datasets:
          - path: ./corpus.jsonl
        adapter: qlora
        load_in_4bit: true
        lora_r: 8
        lora_alpha: 16
        micro_batch_size: 2
        sequence_len: 64
        """) + extra)
    return TrainConfigFacts(load(path), engine=engine)


def test_a_cpu_run_with_axolotls_auto_enabled_lora_kernels_is_refused_with_the_fix(tmp_path):
    res = axolotl_device(facts(tmp_path), CPU_TORCH, NO_GPU)
    assert res.status == Status.FAIL
    assert res.message.startswith("torch is a CPU-only build, but the config asks axolotl for CUDA-only kernels")
    assert "lora_mlp_kernel: false, lora_qkv_kernel: false, lora_o_kernel: false, lora_embedding_kernel: false" \
        in res.message and str(tmp_path / "axolotl.yaml") in res.message
    detail = " ".join(res.details)
    assert "Auto-enabling LoRA kernel optimizations" in detail and "Torch not compiled with CUDA enabled" in detail


def test_the_same_config_with_the_kernels_off_runs_on_the_cpu(tmp_path):
    res = axolotl_device(facts(tmp_path, OFF), CPU_TORCH, NO_GPU)
    assert res.status == Status.OK and "axolotl trains on the CPU" in res.message


def test_flash_attention_without_cuda_is_refused(tmp_path):
    res = axolotl_device(facts(tmp_path, OFF + "flash_attention: true\n"), CPU_TORCH, NO_GPU)
    assert res.status == Status.FAIL and "attn_implementation: sdpa" in res.message
    res = axolotl_device(facts(tmp_path, OFF + "attn_implementation: flash_attention_2\n"), CPU_TORCH, NO_GPU)
    assert res.status == Status.FAIL


def test_a_cuda_torch_without_a_visible_gpu_is_refused_too(tmp_path):
    res = axolotl_device(facts(tmp_path), CUDA_TORCH, NO_GPU)
    assert res.status == Status.FAIL and res.message.startswith("no GPU is visible")


def test_with_cuda_and_a_gpu_the_kernels_are_fine(tmp_path):
    assert axolotl_device(facts(tmp_path), CUDA_TORCH, H200).status == Status.OK


def test_only_axolotl_runs_are_judged(tmp_path):
    assert axolotl_device(facts(tmp_path, engine="runner"), CPU_TORCH, NO_GPU).status == Status.SKIP


def test_which_kernels_axolotl_turns_on_follows_its_own_validator():
    assert lora_kernels_on({"adapter": "lora"}) == list(LORA_KERNELS)
    assert lora_kernels_on({"adapter": "qlora", "load_in_4bit": True}) == list(LORA_KERNELS)
    assert lora_kernels_on({"adapter": "qlora", "lora_mlp_kernel": False}) == []  # one set: no auto-enable
    assert lora_kernels_on({"adapter": "qlora", "lora_o_kernel": True}) == ["lora_o_kernel"]
    assert lora_kernels_on({"adapter": "lora", "load_in_8bit": True}) == []
    assert lora_kernels_on({"adapter": "lora", "rl": "dpo"}) == []
    assert lora_kernels_on({"adapter": "lora", "trust_remote_code": True}) == []
    assert lora_kernels_on({}) == []  # a full fine-tune has no LoRA kernels


def cuda_build(dist, rel):
    return Extension(dist, "1.0", f"/venv/lib/python3.11/site-packages/{rel}", rel, None,
                     unresolved=[{"name": "libc10_cuda.so", "searched": ["ld.so cache"]}])


def test_pips_cuda_xformers_and_torchao_beside_a_cpu_torch_do_not_block_an_axolotl_run():
    binaries = BinaryFacts([cuda_build("xformers", "xformers/_C.so"), cuda_build("torchao", "torchao/_C_mxfp8.so")])
    assert cpu_tolerated_extensions(binaries, CPU_TORCH) == ["torchao", "xformers"]
    assert cpu_tolerated_extensions(binaries, CUDA_TORCH) is None  # with CUDA, a build that cannot load is broken
    abi = Extension("flash-attn", "2.8.3", "/x/flash_attn_2_cuda.so", "flash_attn_2_cuda.so", "flash_attn_2_cuda",
                    missing=[{"mangled": "_ZN3c10", "demangled": "c10::x()", "instead": []}])
    assert cpu_tolerated_extensions(BinaryFacts(binaries.extensions + [abi]), CPU_TORCH) is None
    assert cpu_tolerated_extensions(BinaryFacts([]), CPU_TORCH) is None
    assert cpu_tolerated_extensions(None, CPU_TORCH) is None  # the binaries probe failed: judge nothing


def test_the_hand_off_puts_the_target_environments_bin_first_on_path(tmp_path):
    system = FakeSystem(tmp_path, env={"PATH": "/usr/bin:/opt/venvs/bin", "HOME": "/home/u"})
    system.write("/opt/venvs/pyvenv.cfg", "home = /usr/bin\n")
    env = axolotl_env(system, "/opt/venvs/bin/axolotl")
    assert env["PATH"] == "/opt/venvs/bin:/usr/bin" and env["VIRTUAL_ENV"] == "/opt/venvs"
    assert env["HOME"] == "/home/u" and env["PYTHONUNBUFFERED"] == "1"


def test_without_axolotl_the_install_command_keeps_the_targets_torch():
    from envbuild import dist, pyenv
    from envdoctor.training.backends import axolotl_missing
    said = axolotl_missing(pyenv(dist("torch", "2.13.0+cpu")))
    assert said.startswith("axolotl is not installed in the target interpreter /venv/bin/python")
    assert "/venv/bin/python -m pip install 'axolotl' 'torch==2.13.0+cpu'" in said  # as docs/remedies.md pins
    assert "keeping torch 2.13.0+cpu" in said
    bare = axolotl_missing(pyenv())  # no torch to keep: say to install the right one first
    assert "-m pip install 'axolotl'\n" in bare and "envdoctor install --venv DIR" in bare
    assert axolotl_missing(pyenv(dist("torch", "2.13.0+cpu"), dist("axolotl", "0.19.0"))) is None


def test_a_probe_that_outlasts_its_timeout_is_a_preflight_failure_not_a_crash(tmp_path):
    """`train --backend axolotl` asks the probe about axolotl before anything else. A target whose probe
    leaves a process holding its pipes comes back only after the timeout and the 5 s drain: that is the
    preflight's python.interpreter failure, never a TimeoutError out of the command (exit 3)."""
    import io
    import sys
    import time

    from envdoctor import target
    from envdoctor.assets import asset
    from envdoctor.cli import build_parser
    from envdoctor.commands.train import run_train
    from envdoctor.context import Context
    from envdoctor.system import CommandResult, System

    class SlowProbe(System):  # the real machine, but the target's probe hangs past its timeout
        def run(self, argv, timeout, input=None, env=None):
            if list(argv) == target.argv(sys.executable, "probe"):
                time.sleep(timeout + 5.5)  # the drain of a grandchild's pipes (system._drain) on top
                return CommandResult(tuple(argv), None, "", "", timeout, timed_out=True)
            return super().run(argv, timeout, input=input, env=env)

    config = asset("train", "configs", "demo.yaml")
    args = build_parser("train").parse_args(["train", str(config), "--backend", "axolotl", "--dry-run",
                                             "--python", sys.executable, "--output-dir", str(tmp_path / "run")])
    out = io.StringIO()
    code = run_train(args, SlowProbe(), Context(python=sys.executable, python_reason="test", probe_timeout=0.05),
                     out=out)
    assert code == 1, out.getvalue()
    assert "python.interpreter" in out.getvalue() and "refusing to start" in out.getvalue()
