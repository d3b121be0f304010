#!/usr/bin/env python3
"""QLoRA training the way users run it, on a random-weight model of a public shape: the measurement
side of the memory estimator (bench/calibrate_memory.py) and of speed benches.

Three engines, each built the way its code builds it:
  hf-loop     the loop the PEFT / bitsandbytes docs show: from_pretrained(quantization_config=
              BitsAndBytesConfig(nf4, double quant, bf16 compute)), prepare_model_for_kbit_training (fp32
              norms, embeddings and lm_head; checkpointing on), get_peft_model(LoraConfig), bitsandbytes'
              paged 8-bit AdamW, loss = model(input_ids, labels=...).loss, no autocast
  hf-trainer  the same model through transformers' Trainer (bf16=True: autocast; optim paged_adamw_8bit),
              which is what axolotl drives
  runner      envdoctor's runner: from_pretrained with the same quantization (its base_model path), then
              its own attach_lora, CausalLMLoss (chunked cross-entropy) and build_optimizer
              (train/envdoctor_runner/modeling.py, loss.py)

Checkpointing is non-reentrant in all three: transformers 5's activation_checkpointing_enable(None) and
axolotl 0.19's trainer builder (gradient_checkpointing_kwargs unset → {"use_reentrant": False}) choose it;
peft 0.21's prepare_model_for_kbit_training without kwargs passes {} on, and torch.utils.checkpoint then
warns and falls back to the reentrant variant — so the docs loop here passes use_reentrant=False as the
PEFT docs' QLoRA examples do, and --reentrant measures the other.

Random weights: the model is built once from its config in bf16, saved to a local folder
(save_random_model) and read back by from_pretrained, so quantization goes through transformers' own
bitsandbytes path. One quantized base per (shape, engine family) is reused across grid points: each
point wraps it in fresh adapters (build_peft_model), trains (run_steps / run_trainer) and unwraps
(release).

Importable: build_peft_model(base, cfg, engine) -> Trainable; run_steps(t, cfg, steps, device) -> dict
with tokens_per_s, peak_allocated, peak_reserved (bytes), paged_bytes, other_used.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "train"))  # the runner's modules (envdoctor_runner), as train/qlora.py finds them

ENGINES = ("hf-loop", "hf-trainer", "runner")
# Public config.json shapes (typed in: shapes only, no weights). The rope scaling of Llama 3.1/3.2 does not
# change memory and is left out.
SHAPES = {
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072,
                         rope_theta=500000.0, tie_word_embeddings=False),
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072,
                         rope_theta=500000.0, tie_word_embeddings=True),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
                         rope_theta=500000.0, tie_word_embeddings=True),
    # For proving the code paths on a CPU: dimensions bitsandbytes' CPU kernels tile.
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=8192, tie_word_embeddings=False),
    "tiny-tied": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=32, vocab_size=512, max_position_embeddings=8192,
                      tie_word_embeddings=True),
}
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def base_config(**over) -> dict:
    """A resolved envdoctor config (the seed's QLoRA settings) with `over` applied: what the estimator
    reads, and what the runner's code takes."""
    cfg = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
               bnb_4bit_compute_dtype="bfloat16", lora_r=64, lora_alpha=128, lora_dropout=0.05,
               lora_target_modules=list(ALL_LINEAR), lora_target_linear=False, lora_modules_to_save=[],
               optimizer="paged_adamw_8bit", learning_rate=1e-4, weight_decay=0.0, bf16=True,
               gradient_checkpointing=True, sequence_len=2048, micro_batch_size=2, gradient_accumulation_steps=1,
               loss_chunk_tokens=1024)
    try:  # with envdoctor importable, every other key gets the doctor's own default
        from envdoctor.training.config import resolve
        cfg = resolve(cfg)
    except ImportError:
        pass
    cfg.update(over)
    return cfg


def save_random_model(shape: str, folder: Path, device: str) -> Path:
    """A random bf16 Llama of `shape`, saved once to `folder` (reused when it is there). Initialised on
    `device` (an 8B shape: 16 GB on the GPU, seconds; on a CPU minutes)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        torch.manual_seed(0)
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**SHAPES[shape]))
    finally:
        torch.set_default_dtype(default)
    # Saved beside and renamed into place: two processes building the same shape at once (two GPUs of one
    # box, 2026-11-30) must never see each other's half-written folder (config.json is written first).
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.{os.getpid()}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging, max_shard_size="4GB")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    del model
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    try:
        os.rename(staging, folder)
    except OSError:  # another process put its copy there first: the same seed, the same weights
        shutil.rmtree(staging, ignore_errors=True)
        if not (folder / "config.json").exists():
            raise
    return folder


def quantization(cfg: dict):
    import torch
    from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg["bnb_4bit_quant_type"],
                              bnb_4bit_use_double_quant=cfg["bnb_4bit_use_double_quant"],
                              bnb_4bit_compute_dtype=getattr(torch, cfg["bnb_4bit_compute_dtype"]))


def load_base(folder: Path, family: str, cfg: dict, device: str, reentrant: bool = False):
    """The quantized base one engine family trains on: "hf" (hf-loop and hf-trainer: prepared by peft's
    prepare_model_for_kbit_training) or "runner" (the runner's own from_pretrained call, nothing cast)."""
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quantization(cfg), dtype=torch.bfloat16,
                                                 device_map={"": device})
    model.config.use_cache = False
    if family == "hf":
        from peft import prepare_model_for_kbit_training
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                                gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    else:
        from envdoctor_runner.modeling import same_kernel_in_eval
        same_kernel_in_eval(model)
        for p in model.parameters():  # what attach_lora does first at every point: the snapshot's state
            p.requires_grad_(False)
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return model


@dataclass
class Trainable:
    engine: str
    model: object                      # the peft model
    loss: Callable                     # (input_ids) -> scalar loss
    params: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)  # what release() had to put back on the base
    overrides_cleared: int = 0                        # bitsandbytes module overrides release() dropped


def build_peft_model(base, cfg: dict, engine: str, reentrant: bool = False) -> Trainable:
    """Fresh adapters on `base` (from load_base, of the engine's family) for one run of `cfg`."""
    import torch
    if engine == "runner":
        from envdoctor_runner.loss import CausalLMLoss
        from envdoctor_runner.modeling import attach_lora
        model = attach_lora(base, cfg, torch.bfloat16)
        wrapped = CausalLMLoss(model, cfg["loss_chunk_tokens"], torch.bfloat16)  # as the runner: bf16 weights
        return Trainable(engine, model, lambda ids: wrapped(ids, None, ids),
                         [p for p in model.parameters() if p.requires_grad])
    from peft import LoraConfig, get_peft_model
    if cfg["gradient_checkpointing"]:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    else:
        base.gradient_checkpointing_disable()
    lora = LoraConfig(r=cfg["lora_r"], lora_alpha=cfg["lora_alpha"], lora_dropout=cfg["lora_dropout"],
                      target_modules="all-linear" if cfg["lora_target_linear"] else cfg["lora_target_modules"],
                      modules_to_save=cfg["lora_modules_to_save"] or None, task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    return Trainable(engine, model, lambda ids: model(input_ids=ids, labels=ids).loss,
                     [p for p in model.parameters() if p.requires_grad])


def make_optimizer(params, cfg: dict, device: str, notes: list[str]):
    import torch
    if cfg["optimizer"] == "paged_adamw_8bit":
        import bitsandbytes as bnb
        if not device.startswith("cuda"):
            notes.append("paged 8-bit AdamW on a CPU: bitsandbytes falls back to unpaged state")
        return bnb.optim.PagedAdamW8bit(params, lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"])
    return torch.optim.AdamW(params, lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"])


def warm_up(base, device: str, vocab: int) -> None:
    """One no-grad forward of 8 tokens through the base and one small backward on the device, before the
    base's baseline is taken: what the first kernels leave allocated for the life of the process (cuBLAS /
    cuBLASLt workspaces that _reset cannot clear, lazily made buffers) is then part of the baseline, not
    counted against the first point that runs them."""
    import torch
    ids = torch.randint(0, vocab, (1, 8), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        base(input_ids=ids)
    x = torch.ones(64, 64, device=device, requires_grad=True)
    (x @ x).sum().backward()
    del x, ids


def _reset(device: str, collect: bool = True) -> None:
    import torch
    if collect:  # a full collection walks every Python object: ~0.5 s with transformers loaded
        gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        # cuBLAS workspaces live in torch's allocator from the first matmul on: without this a point's
        # baseline would sit above the freshly built base's by their size.
        if hasattr(torch._C, "_cuda_clearCublasWorkspaces"):
            torch._C._cuda_clearCublasWorkspaces()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _paged_bytes(optimizer) -> int:
    """Optimizer state bitsandbytes keeps in paged (CUDA managed) memory: on the card, outside torch's
    allocator, so in neither max_memory_allocated nor max_memory_reserved."""
    total = 0
    for state in getattr(optimizer, "state", {}).values():
        for t in state.values() if isinstance(state, dict) else ():
            if getattr(t, "is_paged", False):
                total += t.numel() * t.element_size()
    return total


def free_paged(optimizer) -> int:
    """Give back the CUDA managed memory of the optimizer's paged state; returns the bytes freed.

    bitsandbytes never frees it: get_paged allocates with cudaMallocManaged, keeps every buffer in its
    GlobalPageManager, and a tensor made by torch.frombuffer does not own its memory. One run per process
    does not mind; a calibration that builds an optimizer per grid point would keep every earlier point's
    state resident on the card. Freed with the driver's cuMemFree (one driver per process, whatever
    runtime bnb links); where libcuda cannot be loaded, the pages are moved to the host instead."""
    import ctypes

    import torch
    paged = [t for state in getattr(optimizer, "state", {}).values() if isinstance(state, dict)
             for t in state.values() if getattr(t, "is_paged", False)]
    if not paged:
        return 0
    from bitsandbytes import functional as F
    manager = F.GlobalPageManager.get_instance()
    ids = {id(t) for t in paged}
    manager.paged_tensors = [t for t in manager.paged_tensors if id(t) not in ids]
    torch.cuda.synchronize()
    try:
        free = ctypes.CDLL("libcuda.so.1").cuMemFree_v2
    except OSError:
        for t in paged:
            F.prefetch_tensor(t, to_cpu=True)
        return 0
    total = 0
    for state in getattr(optimizer, "state", {}).values():  # nothing may touch these tensors afterwards
        for key in [k for k, t in state.items() if getattr(t, "is_paged", False)] if isinstance(state, dict) else ():
            del state[key]
    for t in paged:
        if free(ctypes.c_void_p(t.data_ptr())) == 0:
            total += t.numel() * t.element_size()
    return total


def _memory(device: str, optimizer) -> dict:
    import torch
    out = dict(peak_allocated=0, peak_reserved=0, paged_bytes=_paged_bytes(optimizer), other_used=0)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        # Used on the card beyond torch's reserve: the CUDA context, cuBLAS workspaces, paged state.
        out.update(peak_allocated=torch.cuda.max_memory_allocated(), peak_reserved=torch.cuda.max_memory_reserved(),
                   other_used=total - free - torch.cuda.memory_reserved(), total=total)
    return out


def run_steps(t: Trainable, cfg: dict, steps: int, device: str, vocab: int) -> dict:
    """`steps` optimizer steps of gradient_accumulation_steps micro batches of random tokens; the first
    (kernels, allocator, optimizer state) counts for memory, not for speed. Peaks are over all steps,
    from a reset after the adapters were built."""
    import torch
    _reset(device, collect=False)  # the caller collected before building the adapters
    if t.engine == "runner":  # the runner's own choice of optimizer class and arguments
        from envdoctor_runner.modeling import build_optimizer
        opt = build_optimizer(cfg, t.model, device, t.notes)
    else:
        opt = make_optimizer(t.params, cfg, device, t.notes)
    b, s, accum = cfg["micro_batch_size"], cfg["sequence_len"], cfg["gradient_accumulation_steps"]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (b, s), generator=gen).to(device)
    t.model.train()
    took = 0.0
    for step in range(steps):
        start = time.perf_counter()
        for _ in range(accum):
            loss = t.loss(ids)
            (loss / accum).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())  # waits for the device
        if step:
            took += time.perf_counter() - start
    out = _memory(device, opt)
    timed = max(steps - 1, 1)
    out["tokens_per_s"] = b * s * accum * timed / took if took else None
    out["loss"] = float(loss.detach())
    if device.startswith("cuda"):
        out["paged_freed"] = free_paged(opt)
    del opt, loss
    return out


def run_trainer(t: Trainable, cfg: dict, steps: int, device: str, vocab: int) -> dict:
    """The same model through transformers' Trainer: bf16 autocast, optim="paged_adamw_8bit", the
    checkpointing Trainer itself turns on (its default kwargs: non-reentrant)."""
    import torch
    from transformers import Trainer, TrainingArguments
    _reset(device, collect=False)
    b, s, accum = cfg["micro_batch_size"], cfg["sequence_len"], cfg["gradient_accumulation_steps"]
    gen = torch.Generator().manual_seed(0)
    rows = [{"input_ids": x, "labels": x} for x in torch.randint(0, vocab, (b * accum * steps, s), generator=gen)]
    with tempfile.TemporaryDirectory() as out_dir:
        args = TrainingArguments(output_dir=out_dir, per_device_train_batch_size=b, gradient_accumulation_steps=accum,
                                 max_steps=steps, learning_rate=cfg["learning_rate"], weight_decay=cfg["weight_decay"],
                                 optim="paged_adamw_8bit" if cfg["optimizer"] == "paged_adamw_8bit" else "adamw_torch",
                                 bf16=True, gradient_checkpointing=cfg["gradient_checkpointing"],
                                 gradient_checkpointing_kwargs={"use_reentrant": False},
                                 save_strategy="no", report_to=[], logging_steps=10 ** 6, disable_tqdm=True,
                                 remove_unused_columns=False, dataloader_pin_memory=False,
                                 use_cpu=not device.startswith("cuda"), seed=0)
        trainer = Trainer(model=t.model, args=args, train_dataset=rows)
        start = time.perf_counter()
        result = trainer.train()
        took = time.perf_counter() - start
        out = _memory(device, trainer.optimizer)
        # Trainer times its whole run, the first step included: a lower bound on the steady rate.
        out["tokens_per_s"] = b * s * accum * steps / took
        out["loss"] = float(result.training_loss)
        if device.startswith("cuda"):
            out["paged_freed"] = free_paged(trainer.optimizer)
        trainer.optimizer = trainer.lr_scheduler = None
        del trainer
    return out


def release(t: Trainable, engine: str, snapshot: "BaseSnapshot | None" = None):
    """The base back without adapters or modules_to_save copies, for the next point; with `snapshot`, also
    put back what peft's unload() does not (BaseSnapshot.restore: its list of repairs is t.notes' last
    entry when there were any) and drop bitsandbytes' global overrides (clear_bnb_overrides)."""
    base = t.model.unload()
    t.model = t.loss = None
    t.params.clear()
    if snapshot is not None:
        t.repairs = snapshot.restore(base)
    t.overrides_cleared = clear_bnb_overrides()
    return base  # the next point's _reset collects what is left


def decoder_layers(model) -> list:
    """The modules whose `gradient_checkpointing` flag decides whether a layer's activations are recomputed
    (transformers' GradientCheckpointingLayer: the decoder layers)."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # older transformers: any module with the flag but the model itself
        return [m for m in model.modules() if hasattr(m, "gradient_checkpointing") and m is not model]
    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def checkpointing_on(model) -> bool | str:
    """Whether the decoder layers will checkpoint, as set on them (not as the config asked): True, False,
    or "mixed" (some layers only), "no layers" (nothing found)."""
    flags = {bool(getattr(m, "gradient_checkpointing", False)) for m in decoder_layers(model)}
    if not flags:
        return "no layers"
    return flags.pop() if len(flags) == 1 else "mixed"


def clear_bnb_overrides() -> int:
    """Forget what transformers' Trainer registered with bitsandbytes' GlobalOptimManager; returns how
    many module overrides were dropped.

    For an 8-bit bnb optimizer, Trainer.create_optimizer registers every nn.Embedding of the model
    (register_module_override(module, "weight", {"optim_bits": 32})) with that process-wide singleton,
    which keeps the module in a list for ever: after a modules_to_save point the fp32 embedding copy
    (128256 x 4096 x 4 B = 2.1 GB for an 8B shape) stays on the card, one per point. Its pid2config is
    keyed by id(), which a later parameter may reuse."""
    try:
        from bitsandbytes.optim import GlobalOptimManager
    except Exception:  # noqa: BLE001 - no bitsandbytes: nothing registered
        return 0
    manager = GlobalOptimManager.get_instance()
    dropped = len(manager.module_weight_config_triple)
    manager.initialize()
    return dropped


class BaseSnapshot:
    """What a reused base is made of right after load_base, to put it back after each point and to check
    that it was.

    peft 0.21's unload() returns, for a module wrapped by modules_to_save, the trained COPY
    (ModulesToSaveWrapper.unload_and_optionally_merge_module), not the original: after such a point the
    base's embed_tokens / lm_head are the copies (requires_grad True; in the runner family fp32 where the
    base had bf16: attach_lora casts the copies). Forward hooks added per point (the runner's dtype hook
    on the input embedding, transformers' make_inputs_require_grads) would pile up on the base.
    The runner trains modules_to_save in place where it can (on a GPU with 8-bit AdamW): the trained
    parameters are then the base's own, so their values stay trained after the point (same objects, shapes
    and dtypes: memory is unaffected; a later point's loss starts from them), and the gradients of a point
    that failed between a backward and zero_grad would stay on them: restore() drops those."""

    def __init__(self, base):
        self.modules = dict(base.named_modules(remove_duplicate=False))
        self.params = {n: (p, p.dtype, p.requires_grad) for n, p in base.named_parameters(remove_duplicate=False)}
        self.hooks = {n: (set(m._forward_hooks), set(m._forward_pre_hooks)) for n, m in self.modules.items()}
        self.require_grads_hooks = list(getattr(base, "_require_grads_hooks", []) or [])
        self.checkpointing = checkpointing_on(base)

    def restore(self, base) -> list[str]:
        """Put the base back as it was loaded; returns what had to be repaired (empty: nothing)."""
        repairs = []
        for name in sorted(self.modules, key=lambda n: n.count(".")):  # parents before children
            if not name:
                continue
            parent_name, _, leaf = name.rpartition(".")
            parent = base.get_submodule(parent_name) if parent_name else base
            if getattr(parent, leaf, None) is not self.modules[name]:
                now = type(getattr(parent, leaf, None)).__name__
                setattr(parent, leaf, self.modules[name])
                repairs.append(f"{name}: the original module put back ({now} was there)")
        for name, (p, dtype, grad) in self.params.items():
            if p.requires_grad != grad:
                p.requires_grad_(grad)
                repairs.append(f"{name}: requires_grad back to {grad}")
            if p.grad is not None:  # the runner trains modules_to_save in place: their gradients are the base's
                p.grad = None       # (a point that failed between a backward and zero_grad left them)
                repairs.append(f"{name}: its gradient dropped")
        for name, m in self.modules.items():
            fwd, pre = self.hooks[name]
            extra = [k for k in m._forward_hooks if k not in fwd] + [k for k in m._forward_pre_hooks if k not in pre]
            for k in extra:
                m._forward_hooks.pop(k, None)
                m._forward_pre_hooks.pop(k, None)
            if extra:
                repairs.append(f"{name or 'model'}: {len(extra)} forward hook(s) added by the point removed")
        if hasattr(base, "_require_grads_hooks"):
            base._require_grads_hooks = list(self.require_grads_hooks)
        return repairs

    def differences(self, base) -> list[str]:
        """How the base differs from the snapshot now (empty: it is the base that was loaded)."""
        out = []
        now = dict(base.named_parameters(remove_duplicate=False))
        for name, (p, dtype, grad) in self.params.items():
            q = now.get(name)
            if q is not p:
                out.append(f"{name}: another parameter" + (f" ({q.dtype})" if q is not None else " (missing)"))
            elif q.dtype != dtype or q.requires_grad != grad:
                out.append(f"{name}: {q.dtype} requires_grad={q.requires_grad}, loaded {dtype} {grad}")
            elif q.grad is not None:
                out.append(f"{name}: holds a gradient")
        out += [f"{n}: new parameter" for n in now if n not in self.params]
        return out


def live_tensors() -> tuple[int, int]:
    """(count, bytes) of the distinct storages of every torch.Tensor Python still reaches: the CPU's
    stand-in for torch.cuda.memory_allocated(), and on a GPU a check that nothing of a point survives."""
    import warnings

    import torch
    seen, total = set(), 0
    with warnings.catch_warnings():  # isinstance() on some library proxies among gc's objects warns
        warnings.simplefilter("ignore")
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for obj in tensors:
        try:
            storage = obj.untyped_storage()
        except Exception:  # noqa: BLE001 - meta / sparse / wrapper tensors without one storage
            continue
        key = (storage.data_ptr(), str(obj.device))
        if key in seen or not storage.data_ptr():
            continue
        seen.add(key)
        total += storage.nbytes()
    del tensors
    return len(seen), total


def apply_liger() -> str | None:
    """Liger's Triton kernels into transformers' Llama classes (as axolotl's liger plugin does); None if
    applied, else why not. Process-wide: every model built afterwards has them."""
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_llama
    except Exception as exc:  # noqa: BLE001 - not installed / not importable here
        return f"liger_kernel does not import: {type(exc).__name__}: {exc}".splitlines()[0]
    apply_liger_kernel_to_llama()
    return None


def main() -> int:
    """One point, for a quick look: python bench/hf_loop.py --engine hf-loop --shape tiny --device cpu"""
    import argparse
    import json
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=ENGINES, default="hf-loop")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model-dir", default=None, help="where the random model is saved (default: a temp folder)")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--micro", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--liger", action="store_true")
    args = ap.parse_args()
    if args.liger and (why := apply_liger()):
        print(why)
        return 1
    cfg = base_config(sequence_len=args.seq, micro_batch_size=args.micro)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_random_model(args.shape, Path(args.model_dir or tmp) / args.shape, args.device)
        base = load_base(folder, "runner" if args.engine == "runner" else "hf", cfg, args.device)
        t = build_peft_model(base, cfg, args.engine)
        run = run_trainer if args.engine == "hf-trainer" else run_steps
        print(json.dumps(run(t, cfg, args.steps, args.device, SHAPES[args.shape]["vocab_size"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
