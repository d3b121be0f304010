"""Merging a LoRA adapter into base weights, tensor by tensor: W + scale · B·A for every adapted linear,
the trained copy for every modules_to_save weight, everything else copied as it is. A base with tied
embeddings whose adapter trained a copy of embed_tokens or lm_head gets an lm_head of its own (untied_head)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from envdoctor_runner import safetensors_stream as sts

PREFIX = "base_model.model."
HEAD = "lm_head.weight"


class AdapterError(ValueError):
    pass


def load_adapter(adapter_dir: Path, device: str = "cpu") -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json, tensors). The LoRA factors go to `device` one by one as they are read (on a GPU
    they would be copied there for every merge anyway; an 8B r=64 adapter is 0.7 GB less host memory);
    modules_to_save copies stay on the CPU."""
    adapter_cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    problems = []
    if adapter_cfg.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {adapter_cfg.get('peft_type')!r} (only LORA merges here)")
    if adapter_cfg.get("use_dora"):
        problems.append("use_dora: true (DoRA's magnitude vector is not merged here; use peft's merge_and_unload)")
    if adapter_cfg.get("alpha_pattern") or adapter_cfg.get("rank_pattern"):
        problems.append("alpha_pattern/rank_pattern (per-module scaling is not merged here)")
    if problems:
        raise AdapterError(f"{adapter_dir / 'adapter_config.json'}: " + "; ".join(problems))
    path = adapter_dir / "adapter_model.safetensors"
    head, start = sts.header(path)
    tensors = {}
    for name in head:
        t = sts.read(path, name, head, start)
        tensors[name] = t.to(device) if (".lora_A." in name or ".lora_B." in name) else t
    return adapter_cfg, tensors


def plan(adapter_cfg: dict, tensors: dict[str, torch.Tensor], base_names: set[str],
         tied: bool = False) -> tuple[dict, dict, list[str]]:
    """(lora: base name → (A, B), replaced: base name → tensor, unmatched adapter keys). `tied`: the base's
    config says tie_word_embeddings, so its files hold no lm_head.weight, and a trained copy of it is no stray."""
    lora, replaced, unmatched = {}, {}, []
    for key, value in tensors.items():
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        if ".lora_A." in name or ".lora_B." in name:
            part = "A" if ".lora_A." in name else "B"
            base = name.replace(f".lora_{part}.weight", ".weight").replace(f".lora_{part}.default.weight", ".weight")
            if base not in base_names:
                unmatched.append(key)
                continue
            lora.setdefault(base, {})[part] = value
        elif name in base_names or (tied and name == HEAD):
            replaced[name] = value  # a modules_to_save copy, saved under the base's own name
        else:
            unmatched.append(key)
    incomplete = [k for k, v in lora.items() if set(v) != {"A", "B"}]
    if incomplete:
        raise AdapterError(f"lora_A without lora_B (or the reverse) for {incomplete[:3]}")
    return lora, replaced, unmatched


def untied_head(replaced: dict[str, torch.Tensor], shapes: dict[str, list[int]]) -> str | None:
    """On a base with tied embeddings: the embedding's name when the merged model needs an lm_head.weight of
    its own, else None. peft 0.21 trains a separate copy of each of embed_tokens and lm_head named in
    modules_to_save, and the one not named keeps the frozen tied original: base + adapter then has two
    matrices, and a merged model that ties them again computes something else (its head would be the trained
    embedding, or the lm_head copy would be lost). The head is the adapter's copy, or else the embedding as
    the base has it."""
    embeds = [n for n in shapes if n.endswith("embed_tokens.weight")]
    if HEAD not in replaced and not any(n in replaced for n in embeds):
        return None
    if len(embeds) != 1:
        raise AdapterError(f"the base ties lm_head to its input embedding (tie_word_embeddings: true) and the adapter "
                           f"trained a copy of one of them, but the base holds {len(embeds)} tensors named "
                           f"*embed_tokens.weight ({embeds[:3]}), not one: cannot tell which one to untie")
    if HEAD in replaced and list(replaced[HEAD].shape) != list(shapes[embeds[0]]):
        raise AdapterError(f"the adapter's lm_head copy is {list(replaced[HEAD].shape)}, the base's tied "
                           f"{embeds[0]} {list(shapes[embeds[0]])}: another base model?")
    return embeds[0]


def scale(adapter_cfg: dict, rank: int) -> float:
    alpha = adapter_cfg.get("lora_alpha", rank)
    return alpha / math.sqrt(rank) if adapter_cfg.get("use_rslora") else alpha / rank


def merged(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, adapter_cfg: dict, device: str,
           dequantize=None) -> torch.Tensor:
    """W + scale · B·A in fp32 on `device`, returned in W's dtype. `dequantize` (NF4 round trip) replaces
    W by what the 4-bit training actually saw."""
    w = weight.to(device)
    if dequantize is not None:
        w = dequantize(w)
    delta = b.to(device, torch.float32) @ a.to(device, torch.float32)
    if adapter_cfg.get("fan_in_fan_out"):
        delta = delta.T
    return (w.float() + scale(adapter_cfg, a.shape[0]) * delta).to(weight.dtype).cpu()
