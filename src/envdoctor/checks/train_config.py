"""`envdoctor check --config FILE`: the config's errors, and what the run costs before anything loads."""

from __future__ import annotations

from envdoctor.facts.gpu import GpuFacts
from envdoctor.facts.torch_build import TorchFacts
from envdoctor.facts.train_config import TrainConfigFacts
from envdoctor.model import Remedy, Result, fail, ok, skip, warn
from envdoctor.registry import check
from envdoctor.training.backends import cpu_fix, cuda_only_settings
from envdoctor.training.estimate import GiB, Shape, estimate, ways_to_fit


@check("config.valid", "Training config", "Config", "every key of the training config, all errors at once",
       needs=("train_config",), option="config")
def valid(train_config: TrainConfigFacts) -> Result:
    c = train_config.config
    if c.errors:
        return fail(f"{len(c.errors)} error(s) in {c.path}", c.errors + c.warnings,
                    Remedy(text="Fix the keys named above; `envdoctor train` refuses to start until then."))
    if c.warnings:
        return warn(f"{c.path}: {len(c.warnings)} key(s) envdoctor does not use", c.warnings)
    return ok(f"{c.path}: valid")


@check("config.memory", "Fits in GPU memory", "Config",
       "trainable parameters, adapter size, modules_to_save cost and peak GPU memory, from config.json alone",
       needs=("train_config", "gpu"), option="config")
def memory(train_config: TrainConfigFacts, gpu: GpuFacts) -> Result:
    cfg, model = train_config.config.resolved(), train_config.model
    if model is None:
        return warn(f"cannot estimate: no config.json for {cfg.get('base_model')!r}",
                    [f"looked in {p}" for p in train_config.looked] + ["and envdoctor's table of known shapes"],
                    Remedy(text="Download the model (or its config.json) first, or add model_config."))
    try:
        shape = Shape.from_config(model)
        e = estimate(shape, cfg, engine=train_config.engine)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        return skip(f"cannot estimate from this config ({type(exc).__name__}: {exc}); see config.valid")
    details = [f"trainable: {e.lora_params:,} LoRA" + (f" + {e.save_params:,} modules_to_save" if e.save_params else ""),
               f"adapter on disk: {e.adapter_bytes_bf16 / 1e6:,.0f} MB in bf16, {e.adapter_bytes_fp32 / 1e6:,.0f} MB "
               "in fp32"]
    details += [f"{name}: {v / GiB:.2f} GiB" for name, v in e.parts.items() if v]
    details.append(f"shape from {train_config.model_from}; memory of "
                   + ("envdoctor's runner" if train_config.engine == "runner" else "axolotl / a plain peft loop"))
    if e.save_params:
        no_save = estimate(shape, dict(cfg, lora_modules_to_save=[]), engine=train_config.engine)
        details.append(f"modules_to_save costs {(e.peak - no_save.peak) / GiB:.1f} GiB and "
                       f"{e.save_params:,} trainable parameters: only needed when you add tokens")
    if not gpu.present:
        return ok(f"estimated peak {e.peak / GiB:.1f} GiB of GPU memory (no GPU here to compare with)", details)
    free = min(g.mem_free or 0 for g in gpu.gpus)
    if e.peak > free * 0.95:
        fits = ways_to_fit(shape, cfg, free * 0.9, train_config.engine)
        return fail(f"estimated peak {e.peak / GiB:.1f} GiB, but the GPU has {free / GiB:.1f} GiB free", details,
                    Remedy(text="To fit: " + ("; or ".join(fits) if fits else "a GPU with more memory") + "."))
    return ok(f"estimated peak {e.peak / GiB:.1f} GiB of {free / GiB:.1f} GiB free", details)


@check("config.axolotl_device", "axolotl on this device", "Config",
       "for `train --backend axolotl`: settings of the config that need CUDA, on a machine without it",
       needs=("train_config", "torch", "gpu"), option="config")
def axolotl_device(train_config: TrainConfigFacts, torch: TorchFacts, gpu: GpuFacts) -> Result:
    if train_config.engine != "peft":  # train.py sets "peft" for --backend axolotl only
        return skip("not an axolotl run")
    if torch.installed and torch.cuda and gpu.present:
        return ok(f"CUDA {torch.cuda} and {len(gpu.gpus)} GPU(s): axolotl's CUDA kernels can run")
    where = "torch is a CPU-only build" if torch.installed and not torch.cuda else "no GPU is visible"
    cfg = train_config.config.data
    found = cuda_only_settings(cfg)
    if not found:
        return ok(f"{where}: axolotl trains on the CPU (no CUDA-only setting in the config)")
    # The fix goes into the message: `train` prints messages only, and `check --config` skips this check.
    return fail(f"{where}, but the config asks axolotl for CUDA-only kernels; to train on the CPU, set "
                f"{cpu_fix(cfg)} in {train_config.config.path}", found,
                Remedy(text=f"Set {cpu_fix(cfg)} in the config, or run it on a machine with an NVIDIA GPU."))
