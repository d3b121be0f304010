"""Training engines other than the bundled runner: axolotl, when the target environment has it.

What axolotl 0.19.0 (pip's newest for torch 2.13) really does on a machine without CUDA, measured on a
2-core CPU box with torch 2.13.0+cpu:
- `axolotl train` starts `accelerate launch -m axolotl.cli.train` by name from PATH
  (axolotl/cli/utils/train.py); run by its full path from an unactivated venv it dies with
  "FileNotFoundError: [Errno 2] No such file or directory: b'/bin/accelerate'", and with another
  environment's accelerate first on PATH it would train in the wrong interpreter: `axolotl_env`.
- For adapter lora/qlora it turns its fused LoRA kernels on by itself ("Auto-enabling LoRA kernel
  optimizations for faster training. Please explicitly set `lora_*_kernel` config values to `false` to
  disable."). They are Triton kernels that allocate on CUDA (axolotl/kernels/swiglu.py:
  `torch.empty(..., device="cuda")`), so the first step fails with "AssertionError: Torch not compiled
  with CUDA enabled" — and the process then hangs instead of exiting. `cuda_only_settings` says which
  keys do that; the config.axolotl_device check refuses before the hand-off.
- With the four kernels set to false, LoRA and QLoRA (bitsandbytes 0.50.2's CPU NF4) train and
  `axolotl merge-lora` merges on the CPU.
- `pip install axolotl` beside a CPU torch brings CUDA builds of xformers and torchao whose shared objects
  cannot load there (binaries.extensions fails); axolotl's CPU path never needs them (torchao logs
  "Failed to load …/_C_mxfp8…so" and goes on): `cpu_tolerated_extensions`.
"""

from __future__ import annotations

import os
from pathlib import Path

from envdoctor.context import Context
from envdoctor.errors import UsageError
from envdoctor.facts.python_env import PythonEnv
from envdoctor.repair.requests import pip_line, torch_pin
from envdoctor.system import System

# axolotl's fused LoRA kernels (Triton, CUDA only); unset, all four are turned on for lora/qlora.
LORA_KERNELS = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel")


def axolotl_executable(system: System, ctx: Context) -> str | None:
    """The target environment's own `axolotl` script first (beside its python), else the one on PATH."""
    beside = Path(ctx.python).parent / "axolotl"
    if system.exists(str(beside)):
        return str(beside)
    return system.which("axolotl")


def axolotl_missing(python: PythonEnv, verb: str = "train") -> str | None:
    """The first thing to say when the target interpreter has no axolotl: before the config (whose keys are
    axolotl's to judge) or the preflight (whose findings would be about a run that cannot start). The
    install command keeps the target's torch: pip's newest axolotl would otherwise bring its own torch
    build (a CUDA one, over a CPU or another CUDA build), as every remedy in docs/remedies.md avoids."""
    if python.get("axolotl") is not None:
        return None
    pin = torch_pin(python)
    keep = f", keeping torch {pin.split('==', 1)[1]}" if pin else \
        " (torch first, the build for your GPU: `envdoctor install --venv DIR`; without it pip brings its default)"
    return (f"axolotl is not installed in the target interpreter {python.executable}: --backend axolotl hands "
            f"the work to its `axolotl {verb}`. Install it{keep}:\n"
            f"  {pip_line(python.executable, ['axolotl'], pin=pin)}\n"
            "or leave out --backend to use envdoctor's own runner")


def axolotl_argv(system: System, ctx: Context, verb: str, config: str) -> list[str]:
    exe = axolotl_executable(system, ctx)
    if exe is None:
        # axolotl_missing has said it when the distribution is missing: here it is installed without its script
        raise UsageError(f"--backend axolotl: axolotl is installed for {ctx.python}, but its `axolotl` command is "
                         f"neither in {Path(ctx.python).parent} nor on PATH (installed with --user or --target?): put "
                         "the folder that holds it on PATH, or leave out --backend to use envdoctor's runner")
    if not Path(config).is_file():
        raise UsageError(f"{config}: no such config file")
    return [exe, verb, str(config)]


def axolotl_env(system: System, exe: str) -> dict[str, str]:
    """The environment for the hand-off: the target's bin folder first on PATH, as an activated venv
    has it, because axolotl starts `accelerate` (and torchrun) by name."""
    env = dict(system.env)
    bindir = str(Path(exe).parent)
    parts = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != bindir]
    env["PATH"] = os.pathsep.join([bindir] + parts)
    if system.exists(str(Path(bindir).parent / "pyvenv.cfg")):
        env["VIRTUAL_ENV"] = str(Path(bindir).parent)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def lora_kernels_on(cfg: dict) -> list[str]:
    """The LoRA kernels an axolotl config runs: those set true, or all four when none is set and axolotl's
    own validator (check_auto_enable_lora_kernels) turns them on."""
    on = [k for k in LORA_KERNELS if cfg.get(k) is True]
    if on or any(cfg.get(k) is not None for k in LORA_KERNELS):
        return on
    auto = (cfg.get("adapter") in ("lora", "qlora") and not cfg.get("rl") and not cfg.get("nvfp4_merge_aware")
            and not cfg.get("trust_remote_code") and not (cfg.get("adapter") == "lora" and cfg.get("load_in_8bit")))
    return list(LORA_KERNELS) if auto else []


def cuda_only_settings(cfg: dict) -> list[str]:
    """The settings of an axolotl config that need CUDA, each with axolotl's own words for it."""
    found = []
    kernels = lora_kernels_on(cfg)
    if kernels:
        how = "set true" if any(cfg.get(k) is True for k in kernels) else f"unset, so axolotl turns them on for " \
              f"adapter: {cfg.get('adapter')} (\"Auto-enabling LoRA kernel optimizations for faster training\")"
        found.append(f"{', '.join(kernels)} {how}: Triton kernels that allocate on CUDA (axolotl/kernels/swiglu.py); "
                     "on a CPU the first step fails with \"Torch not compiled with CUDA enabled\" and axolotl then "
                     "hangs instead of exiting")
    attn = str(cfg.get("attn_implementation") or "")
    if cfg.get("flash_attention") is True or attn.startswith("flash_attention"):
        key = "flash_attention: true" if cfg.get("flash_attention") is True else f"attn_implementation: {attn}"
        found.append(f"{key}: FlashAttention runs on CUDA only; on a CPU transformers stops with \"FlashAttention2 has "
                     "been toggled on, but it cannot be used\"")
    return found


def cpu_fix(cfg: dict) -> str:
    """What to put in the config to train on a CPU."""
    fix = [f"{k}: false" for k in lora_kernels_on(cfg)]
    attn = str(cfg.get("attn_implementation") or "")
    if cfg.get("flash_attention") is True or attn.startswith("flash_attention"):
        fix.append("attn_implementation: sdpa (and no flash_attention)")
    return ", ".join(fix)


def cpu_tolerated_extensions(binaries, torch) -> list[str] | None:
    """With a CPU-only torch: the dists whose failing shared objects are all CUDA builds (they cannot
    load without CUDA, and axolotl's CPU path does not load them), or None when any failure is of
    another kind (an ABI or symbol mismatch breaks a CPU run too) or torch has CUDA."""
    if binaries is None or torch is None or not torch.installed or torch.cuda:
        return None
    failing = [e for e in binaries.extensions if e.will_fail]
    if not failing or any(e.missing or not any("cuda" in u["name"] for u in e.unresolved) for e in failing):
        return None
    return sorted({e.dist for e in failing})
