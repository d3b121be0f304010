"""Memory and size arithmetic for a QLoRA run, from the model's config.json alone.

What runs out is the card, so an estimate has three layers (all bytes, per GPU):
  allocated  torch.cuda.max_memory_allocated() at the peak: the sum of `parts`
             base      4-bit linears: 0.5 B/param + quantisation constants (NF4 blocks of 64; with double
                       quant ~0.016 B/param, else 0.0625)
             embed     embed_tokens and lm_head: fp32 after peft's prepare_model_for_kbit_training (4 B/param,
                       the HF engines); bf16 in envdoctor's runner, which does not upcast the frozen base
             lora      LoRA weights fp32 (the runner: LORA_BYTES, with their bf16 casts) + optimizer state held
                       by torch (AdamW 8 B/param, 8-bit AdamW 2; paged optimizers' state is not torch's: `paged`)
             save      modules_to_save copies: fp32 weights (+ torch-held optimizer state); in the runner trained in
                       place where it can (not tied, not FSDP; bf16 with an 8-bit AdamW, or fp32): no copy at all
                       (train/envdoctor_runner/saved_modules.py)
             phase     the largest phase of a step, each with the activations and gradients that exist then: the
                       runner's (runner_phases: the loss — one chunk's logits and, for a trained lm_head, its
                       gradient made by head_loss.py — one layer recomputed, the end of backward); the HF engines'
                       (hf_phases: the loss with the whole batch's logits, a layer recomputed, the forward without
                       checkpointing, the end of backward)
             ddp       with several processes and no FSDP: DDP's gradient buckets, a fp32 copy of the grads
             accum     with gradient accumulation: every trainable gradient held between micro batches
  reserved   torch.cuda.max_memory_reserved(): allocated plus the allocator's slack, modelled as
             RESERVE_FRAC × allocated + RESERVE_GIB + RESERVE_LOGITS × one loss's fp32 logits + RESERVE_SAVE
             × the modules_to_save gradients (+ RESERVE_LAYER × one layer's bf16 weights, the runner),
             for the allocator setting in force (allocator.allocator_in_force): expandable segments — what the runner
             and `axolotl train` set when the user set no variable — or torch's default caching allocator; the
             Hugging Face engines under expandable segments have a second set without checkpointing (*_NOGC)
  card       reserved + the paged optimizer's state (bitsandbytes' paged AdamW keeps it in CUDA managed
             memory, resident on the card while training, outside torch's counters) + the CUDA context
A run fits when card × (1 + MARGIN) is at most the free memory of every GPU it uses.

Engines: "runner" (envdoctor's runner), "hf-loop" (the loop the PEFT docs show: from_pretrained with
BitsAndBytesConfig, prepare_model_for_kbit_training, non-reentrant checkpointing, model(labels=...)),
"hf-trainer" (the same model through transformers' Trainer, bf16 autocast: what axolotl drives) and
"peft" = the Hugging Face path: whichever of hf-loop and hf-trainer needs more.

CONSTANTS holds, per engine, what bench/fit_memory.py fits on the measurements of
bench/calibrate_memory.py (bench/hf_loop.py's engines on an H200); the formula accounts the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

GiB = 1024 ** 3
ENGINES = ("runner", "hf-loop", "hf-trainer")
HF_PATH = ("hf-loop", "hf-trainer")   # "peft": the larger of these two
CONTEXT_BYTES = int(0.5 * GiB)        # the CUDA context and library handles of one process (H200: ~0.5 GiB)
MARGIN = 0.05                         # of the card total: the stated margin "fits" keeps
# Fitted constants per engine: bench/fit_memory.py --write on the H200 lines of 2026-11-30
# (bench/results/h200-calibration-2026-11-30*.jsonl: the docs loop, Trainer and the runner on random-weight
# Llama-3.1-8B, 3.2-3B and 3.2-1B shapes quantized by from_pretrained; 13-16 fit points per engine). Allocated
# peaks of the hold-out points are within ±15 %; reserved peaks are not within issue #18's ±10 % / -5 %
# everywhere (the allocator's slack is not a smooth function of the config): docs/training.md.
# The Hugging Face engines' allocated constants (ACT_SCALE … FIXED_HEAD: the phase model, hf_phases) were refitted
# on 2026-12-01 on the fit points of rounds 1-3 under both allocators (bench/results/README.md says exactly how),
# again in the fourth session when Trainer's fixed part became autocast's bf16 copy of lm_head (FIXED_HEAD); with
# them Trainer's reserve under the caching allocator (CONSTANTS' RESERVE_*, on its caching fit points).
# The runner's constants, allocated and reserve, were fitted in the fifth session (2026-12-01) after its loss became
# one pass (train/envdoctor_runner/head_loss.py): on all 120 of its points of the rounds 1-7 grids measured again
# with it; that first fit (a5c95e9) held the blind rounds 8, 9 and 10 measured in the same calls at 43 of 46 (its
# three misses over, +10.4 … +12.4 %). Then its peak became phases (runner_phases), fitted on all 166 points of
# rounds 1-10 (`fit_memory.py … --engine runner --allocator expandable --write`): round 11, drawn and measured after,
# is their hold-out. The terms of the fourth session's reserve gated by where the peak was (a loss chunk's logits,
# the modules_to_save gradients freed by each step, checkpointing's churn) fitted to ~0 with the one-pass loss.
CONSTANTS: dict[str, dict[str, float]] = {
    "runner": dict(
        CHUNK_BYTES=5.934,        # per logit of one loss chunk (bf16 and fp32 buffers; gradient in place)
        LOSS_HIDDEN=13.51,        # per hidden element per token in the loss (final states, copy, grad)
        LORA_BYTES=5.463,         # per LoRA parameter, held throughout (fp32 weight, bf16 casts)
        ACT_RUNNER=0.959,         # × _layer_elements × 2 B per token: one layer recomputed in backward
        ACT_RUNNER_FULL=0.7927,   # the same per layer, all layers kept (no checkpointing)
        SAVE_BYTES_RUNNER=4.068,  # per modules_to_save parameter: its fp32 copy
        SAVE_BYTES_INPLACE=1.229e-06, # per modules_to_save parameter trained in place (the weight is the original's)
        SAVE_GRAD=0.9213,         # × the modules_to_save gradients at the end of backward (runner_phases)
        LORA_GRAD=0.002134,       # × the LoRA gradients while the layers run backward (runner_phases)
        HEAD_LOSS=0.945,          # × a trained lm_head's gradient and buffers in the loss (head_loss.py)
        FIXED_GIB=0.05187,        # GiB held whatever the config (workspaces, kernels' buffers)
        RESERVE_FRAC=5.25e-06, RESERVE_GIB=0.01073, RESERVE_LOGITS=0.1594, RESERVE_SAVE=0.2301, RESERVE_LAYER=1.152),
    "hf-loop": dict(
        ACT_SCALE=1.399,          # × the saved elements per token per layer (_layer_elements), no checkpointing
        ACT_GC=0.3312,            # the same for the one layer recomputed in backward (checkpointing)
        ATT_GC=16.89,             # bytes per (batch × heads × seq²): one layer's attention, recomputed
        ATT_SAVED=3.957,          # bytes per (batch × heads × seq²) per layer without checkpointing
        LOGIT_BYTES=12.04,        # bytes per logit element at the loss (logits, loss, their gradient)
        HEAD_GRAD=1.516,          # per lm_head copy parameter (modules_to_save) from the loss's backward on
        SAVE_GRAD=4.72,           # per modules_to_save parameter at the end of backward (fp32 gradients)
        FIXED_GIB=0.02794,        # GiB held whatever the config (workspaces, kernels' buffers)
        RESERVE_FRAC=0.05188, RESERVE_GIB=0.01516, RESERVE_LOGITS=1.019, RESERVE_SAVE=0.3018),
    "hf-trainer": dict(
        ACT_SCALE=1.071,          # × the saved elements per token per layer (_layer_elements), no checkpointing
        ACT_GC=3.68,              # the same for the one layer recomputed in backward (checkpointing)
        ATT_GC=0,                 # held: bf16 autocast → SDPA's flash kernel, no seq² tensor
        ATT_SAVED=0,              # held, likewise
        LOGIT_BYTES=12.46,        # bytes per logit element at the loss (logits, loss, their gradient)
        HEAD_GRAD=0.7139,         # per lm_head copy parameter (modules_to_save) from the loss's backward on
        SAVE_GRAD=4,              # held at the fp32 gradients' 4 B: no Trainer point peaks there to fit it on
        FIXED_GIB=0.02072,        # GiB held whatever the config (workspaces, kernels' buffers)
        FIXED_HEAD=1.99,          # per lm_head parameter: autocast's bf16 copy of the fp32 lm_head weight
        RESERVE_FRAC=0.1106, RESERVE_GIB=0.002664, RESERVE_LOGITS=0.002438, RESERVE_SAVE=0.5198),
}
# The Hugging Face engines' reserve under expandable segments (what `axolotl train` gives torch when the user
# has not: allocator_in_force), with checkpointing and without it (*_NOGC: without it the peak is at the end of
# the forward, with it in backward, and other blocks churn before each), fitted by bench/fit_memory.py on
# 2026-12-01 (fourth session) on every point measured under that setting in rounds 1-7 (108 of the Hugging Face
# path: the axolotl-alloc files — expandable_segments:True,roundup_power2_divisions:16, axolotl's value for torch
# < 2.9 — rounds 4-7 and the accumulation points — expandable_segments:True alone, axolotl 0.19's for torch
# ≥ 2.9); rounds 8 and 9, measured after, are their hold-out. CONSTANTS' RESERVE_* are those of torch's default
# caching allocator (what a loop a user writes runs under). The runner sets expandable segments itself.
RESERVE_EXPANDABLE: dict[str, dict[str, float]] = {
    "hf-loop": dict(RESERVE_FRAC=0.06388, RESERVE_GIB=0.1287, RESERVE_LOGITS=6.354e-07, RESERVE_SAVE=0.2392,
                    RESERVE_FRAC_NOGC=0.06203, RESERVE_GIB_NOGC=0.08206, RESERVE_LOGITS_NOGC=0.09738,
                    RESERVE_SAVE_NOGC=0.001355),
    "hf-trainer": dict(RESERVE_FRAC=0.06706, RESERVE_GIB=0.2763, RESERVE_LOGITS=0.05615, RESERVE_SAVE=0.1387,
                       RESERVE_FRAC_NOGC=0.1589, RESERVE_GIB_NOGC=0.4093, RESERVE_LOGITS_NOGC=0.4412,
                       RESERVE_SAVE_NOGC=0.2574),
}
# The runner's reserve under torch's caching allocator (a variable of the user's that turns expandable segments
# off: the runner keeps it), fitted on the 8B fit points of grid 1 measured so on 2026-12-01
# (h200-calibration-2026-12-01-runner3-caching.jsonl, with the one-pass loss; the grid's hold-out points held out).
# CONSTANTS' runner RESERVE_* are those of its own setting.
RESERVE_CACHING: dict[str, dict[str, float]] = {
    "runner": dict(RESERVE_FRAC=0.01509, RESERVE_GIB=0.2495, RESERVE_LOGITS=0.2146, RESERVE_SAVE=0.3851,
                   RESERVE_LAYER=0.3206),
}
ALLOCATORS = ("expandable", "caching")   # expandable segments; torch's default caching allocator
# The reserved-peak error of these constants on the H200 hold-out points, (lowest, highest) of estimate /
# measured − 1, per engine as `check --config` estimates it ("peft": the larger of the two Hugging Face engines
# against the larger measured) and allocator: the band a user's run can fall in. FIT_ERROR: the same on the
# points the constants were fitted to (measured errors too: the Hugging Face engines' expandable reserve was
# refitted on every point of rounds 1-7, so its hold-out is rounds 8 and 9, 30 points; the runner's constants were
# fitted on all 166 points of rounds 1-10 of its one-pass loss, so its hold-out is round 11, 22 points, and under
# the caching allocator grid 1's hold-out points, 9; the fitted points' lowest error may be the worse one). A fit
# inside the lower of the two lows is a warning
# (checks/train_config.py).
# tests/test_estimate.py recomputes both from bench/results (bench/fit_memory.py's verdict), so a refit or new
# data must update them.
HOLDOUT_ERROR: dict[tuple[str, str], tuple[float, float]] = {
    ("runner", "expandable"): (-0.004, 0.073), ("runner", "caching"): (-0.051, 0.038),
    ("peft", "expandable"): (-0.042, 0.095), ("peft", "caching"): (-0.083, 0.129),
}
FIT_ERROR: dict[tuple[str, str], tuple[float, float]] = {
    ("runner", "expandable"): (-0.041, 0.083), ("runner", "caching"): (-0.016, 0.032),
    ("peft", "expandable"): (-0.048, 0.096), ("peft", "caching"): (-0.074, 0.148),
}
QUANT_CONST = {True: 0.0159, False: 0.0625}
# Optimizer state per trainable parameter: held by torch's allocator, or paged (on the card, not torch's).
EIGHT_BIT = ("paged_adamw_8bit", "adamw_8bit", "adamw_bnb_8bit")  # the runner's bitsandbytes 8-bit AdamWs
OPT_BYTES = {"adamw_torch": 8.0, "adamw_torch_fused": 8.0, "adamw_8bit": 2.0, "adamw_bnb_8bit": 2.0,
             "paged_adamw_8bit": 0.0, "paged_adamw_32bit": 0.0}
PAGED_BYTES = {"paged_adamw_8bit": 2.0, "paged_adamw_32bit": 8.0}


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False
    head_size: int | None = None   # config.json's head_dim when it is not hidden / heads

    @property
    def head_dim(self) -> int:
        return self.head_size or self.hidden // self.heads

    @classmethod
    def from_config(cls, c: dict) -> "Shape":
        return cls(c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["num_attention_heads"],
                   c.get("num_key_value_heads") or c["num_attention_heads"], c["vocab_size"],
                   bool(c.get("tie_word_embeddings", False)), c.get("head_dim"))

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of every linear of one decoder layer, by module name."""
        h, kv, i = self.hidden, self.kv_heads * self.head_dim, self.intermediate
        q = self.heads * self.head_dim
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


@dataclass
class Estimate:
    lora_params: int
    save_params: int
    adapter_bytes_bf16: int
    adapter_bytes_fp32: int
    parts: dict[str, float]            # bytes by part: their sum is the allocated peak
    engine: str = "runner"             # the engine estimated ("peft" resolves to hf-loop or hf-trainer)
    reserve: float = 0.0               # the allocator's slack: reserved - allocated
    paged: float = 0.0                 # paged optimizer state, on the card outside torch's counters
    context: float = CONTEXT_BYTES
    nproc: int = 1
    sharded: bool = False
    allocator: str = "expandable"      # torch's allocator setting the reserve is estimated for

    @property
    def trainable(self) -> int:
        return self.lora_params + self.save_params

    @property
    def peak(self) -> float:
        """Peak allocated (torch.cuda.max_memory_allocated)."""
        return sum(self.parts.values())

    @property
    def reserved(self) -> float:
        """Peak reserved (torch.cuda.max_memory_reserved)."""
        return self.peak + self.reserve

    @property
    def card(self) -> float:
        """What the process holds on its GPU: reserved + paged state + the CUDA context."""
        return self.reserved + self.paged + self.context

    @property
    def needed(self) -> float:
        """card with the stated margin: what "fits" compares with a GPU's free memory."""
        return self.card * (1 + MARGIN)

    def to_data(self) -> dict:
        """The numbers for the JSON report (bytes, per GPU)."""
        return {"engine": self.engine, "allocator": self.allocator, "nproc": self.nproc, "sharded": self.sharded,
                "peak_allocated_bytes": round(self.peak), "peak_reserved_bytes": round(self.reserved),
                "paged_optimizer_bytes": round(self.paged), "context_bytes": round(self.context),
                "card_bytes": round(self.card), "margin": MARGIN, "needed_bytes": round(self.needed),
                "trainable_params": self.trainable, "lora_params": self.lora_params, "save_params": self.save_params,
                "parts": {k: round(v) for k, v in self.parts.items()}}


def _layer_elements(shape: Shape, dropout: bool) -> float:
    """Tensors one decoder layer saves for backward, in elements per token: attention (norm in/out, q, k,
    v, output), MLP (norm in/out, gate, up, act, product) and, with LoRA dropout, each adapter's dropped
    input. ACT_SCALE turns this count into what is measured."""
    h, kv, i = shape.hidden, shape.kv_heads * shape.head_dim, shape.intermediate
    return 13 * h + 2 * kv + 5 * i + ((6 * h + i) if dropout else 0)


def runner_phases(shape: Shape, k: Mapping[str, float], tokens: int, chunk: int, dropout: bool, gc_on: bool,
                  lora: int, head: bool, embed: bool, grad_bytes: float, cast_bytes: float, shards: int = 1,
                  held: bool = False) -> dict[str, dict[str, float]]:
    """What one micro batch of the runner holds beside its weights, phase by phase (bytes by part): the peak is
    the largest. `head` / `embed`: lm_head / embed_tokens trained (modules_to_save), their gradients
    `grad_bytes` a parameter; `cast_bytes`: the bf16 cast of an fp32 lm_head and head_loss.py's product buffer.
      loss        the saved activations (checkpointing: every layer's input), one chunk's logits and the batch's
                  final hidden states (CHUNK_BYTES a logit, LOSS_HIDDEN a hidden element), and head_loss.py's
                  buffers for a trained lm_head: its gradient, made while the loss is computed (HEAD_LOSS)
      layers      (checkpointing) the layer inputs, one layer recomputed (ACT_RUNNER), the LoRA gradients made
                  so far (LORA_GRAD × all of them) and lm_head's gradient
      embeddings  the end of backward: every LoRA and modules_to_save gradient (SAVE_GRAD × theirs: the
                  embedding backward's dense gradient, lm_head's)
    `held`: with gradient accumulation every gradient is held from the first micro batch on; a later micro
    batch's phases add only what is made and summed into them (lm_head's in the loss, embed_tokens' at the end)."""
    vh = shape.vocab * shape.hidden
    elems = _layer_elements(shape, dropout)
    g_head, g_embed, g_lora = grad_bytes * vh * head, grad_bytes * vh * embed, 4.0 * lora / shards
    keep = {"gradients held across micro batches": g_lora + (g_head + g_embed) / shards} if held else {}
    saved = (tokens * 2 * shape.layers * shape.hidden if gc_on
             else k["ACT_RUNNER_FULL"] * shape.layers * tokens * 2 * elems)
    phases = {"loss": {"activations": saved, "logits and loss": k["CHUNK_BYTES"] * chunk * shape.vocab
                       + k["LOSS_HIDDEN"] * tokens * shape.hidden,
                       "lm_head's gradient and buffers (loss)": k["HEAD_LOSS"] * (g_head + cast_bytes), **keep}}
    if gc_on:
        phases["layers"] = {"activations": saved + k["ACT_RUNNER"] * tokens * 2 * elems,
                            "LoRA gradients": 0.0 if held else k["LORA_GRAD"] * g_lora,
                            "modules_to_save gradients": 0.0 if held else g_head, **keep}
    phases["embeddings"] = {"LoRA gradients": 0.0 if held else g_lora,
                            "modules_to_save gradients": k["SAVE_GRAD"] * (g_embed if held else g_head + g_embed),
                            **keep}
    return phases


def reserve_overrides(engine: str, allocator: str) -> dict[str, float] | None:
    """The RESERVE_* constants `engine` has for `allocator` beside its CONSTANTS (whose RESERVE_* are those of
    the allocator it was first calibrated under: the runner's own expandable segments, the Hugging Face
    engines' torch default), or None."""
    return {"expandable": RESERVE_EXPANDABLE, "caching": RESERVE_CACHING}[allocator].get(engine)


def constants(engine: str, allocator: str = "expandable") -> dict[str, float]:
    """The constants `estimate` uses for `engine` under `allocator`: the allocated constants are the engine's
    whatever the allocator (it changes the slack, not the tensors), the reserve constants the allocator's."""
    if allocator not in ALLOCATORS:
        raise ValueError(f"allocator {allocator!r}: expected one of {', '.join(ALLOCATORS)}")
    if engine not in CONSTANTS:
        raise ValueError(f"engine {engine!r}: expected one of {', '.join(ENGINES)} or peft")
    extra = reserve_overrides(engine, allocator)
    if not extra:
        return CONSTANTS[engine]
    # a _NOGC value of the engine's own allocator does not outlive the override of its constant
    return {n: v for n, v in {**CONSTANTS[engine], **extra}.items()
            if not (n.endswith("_NOGC") and n not in extra and n[:-5] in extra)}


def hf_phases(shape: Shape, k: Mapping[str, float], lora: int, save: int, head: bool, b: int, s: int,
              gc_on: bool, dropout: bool, shards: int = 1, held: bool = False) -> dict[str, dict[str, float]]:
    """What one step of a Hugging Face engine holds beside its weights, phase by phase (bytes by part): the
    peak is the largest. Gradients exist only from the phase that makes them: the lm_head copy's (a
    modules_to_save) from the loss's backward, the LoRA ones from the layers' backward, the embedding copy's
    at the very end — counting them all at the loss phase over-estimated every run whose peak is there.
      loss        (checkpointing) every layer's fp32 input (prepare_model_for_kbit_training makes the residual
                  stream fp32), the logits of the whole batch and the loss's gradient (LOGIT_BYTES a logit)
      layers      (checkpointing) the layer inputs, one layer recomputed (ACT_GC × the elements it saves,
                  ATT_GC a batch × heads × seq² element of its attention), the LoRA gradients (fp32)
      forward     (no checkpointing) every layer's saved tensors (ACT_SCALE, ATT_SAVED) and the logits
      embeddings  the end of backward: the LoRA gradients and every modules_to_save gradient (SAVE_GRAD a
                  parameter: fp32, and the embedding backward's own buffer)
    `held`: with gradient accumulation every gradient is held from the first micro batch on (the estimate's
    "gradients held across micro batches"): a later micro batch's phases add only the new gradients that are
    summed into them — the lm_head copy's at the loss, the embedding copy's at the end."""
    tokens = b * s
    elems = _layer_elements(shape, dropout)
    att = b * shape.heads * s * s
    head_params = shape.vocab * shape.hidden if head else 0
    head_new = k["HEAD_GRAD"] * head_params / shards            # at the loss: made, then kept (or summed in)
    head_grad = 0.0 if held else head_new
    lora_grad = 0.0 if held else 4.0 * lora / shards
    logits = k["LOGIT_BYTES"] * tokens * shape.vocab
    saved_grads = k["SAVE_GRAD"] * ((save - head_params) if held else save) / shards
    phases = {"embeddings": {"LoRA gradients": lora_grad, "modules_to_save gradients": saved_grads}}
    if gc_on:
        inputs = tokens * 4.0 * shape.layers * shape.hidden
        phases["loss"] = {"checkpointed layer inputs": inputs, "logits and loss": logits,
                          "modules_to_save gradients": head_new}
        phases["layers"] = {"checkpointed layer inputs": inputs, "LoRA gradients": lora_grad,
                            "modules_to_save gradients": head_grad,
                            "activations": tokens * 2 * k["ACT_GC"] * elems + k["ATT_GC"] * att}
    else:
        phases["forward"] = {"activations": shape.layers * (tokens * 2 * k["ACT_SCALE"] * elems + k["ATT_SAVED"] * att),
                             "logits and loss": logits, "modules_to_save gradients": head_new}
    return phases


def estimate(shape: Shape, cfg: dict, micro_batch: int | None = None, seq: int | None = None,
             engine: str = "runner", nproc: int = 1, allocator: str = "expandable") -> Estimate:
    """`cfg` is a resolved config (training.config: every key present, defaults filled). `nproc`: processes
    (one GPU each); with cfg["fsdp"] the weights, gradients and optimizer state are sharded over them.
    `allocator`: torch's allocator setting in force (allocator.allocator_in_force): "expandable" (expandable segments,
    what the runner and `axolotl train` set when the user has not) or "caching" (torch's default)."""
    if engine == "peft":  # the Hugging Face path: a docs loop or Trainer, whichever needs more
        both = [estimate(shape, cfg, micro_batch, seq, e, nproc, allocator) for e in HF_PATH]
        return max(both, key=lambda e: e.card)
    k = constants(engine, allocator)
    b = micro_batch or cfg["micro_batch_size"]
    s = seq or cfg["sequence_len"]
    r = cfg["lora_r"]
    lin = shape.linears()
    targets = set(lin) if cfg["lora_target_linear"] else set(cfg["lora_target_modules"])
    lora_layer = sum(r * (i + o) for name, (i, o) in lin.items() if name in targets)
    lora = shape.layers * lora_layer
    embed = shape.vocab * shape.hidden
    heads = 1 if shape.tied else 2
    saves = cfg["lora_modules_to_save"]
    # One trainable copy per module named, tied or not: peft 0.21 copies embed_tokens and lm_head of a
    # tied model separately (measured: tiny tied Llama, both named → 2 × vocab × hidden trainable).
    save = sum(embed for m in saves if m in ("embed_tokens", "lm_head"))
    opt = OPT_BYTES.get(cfg["optimizer"], 8.0)
    paged_per = PAGED_BYTES.get(cfg["optimizer"], 0.0)
    four_bit = cfg["load_in_4bit"]
    half = cfg["bf16"] is not False  # "auto": bf16 on the GPUs this estimate is for
    layer_params = sum(i * o for i, o in lin.values())
    per_param = (0.5 + QUANT_CONST[cfg["bnb_4bit_use_double_quant"]]) if four_bit else 2.0 if half else 4.0
    base = shape.layers * layer_params * per_param
    tokens = b * s
    dropout = cfg["lora_dropout"] > 0
    gc_on = cfg["gradient_checkpointing"]
    runner = engine == "runner"
    sharded = bool(cfg.get("fsdp")) and nproc > 1
    # The runner trains modules_to_save in place (saved_modules.py) when nothing is tied to them, not under
    # FSDP, and in bf16 only with an 8-bit AdamW: then no copy exists and their gradients are in the weights' dtype.
    # FSDP on one process too: the runner keeps the copies whenever fsdp is on (the model is sharded "over one").
    in_place = runner and not cfg.get("fsdp") and not shape.tied and (cfg["optimizer"] in EIGHT_BIT or not half)
    grad_bytes = 2.0 if half else 4.0
    # the runner's modules_to_save: fp32 copies (SAVE_BYTES_RUNNER a parameter) or trained in place (the
    # originals' bf16 weights, counted with the embeddings: SAVE_BYTES_INPLACE); the Hugging Face engines' copies
    save_bytes = (k["SAVE_BYTES_INPLACE"] if in_place else k["SAVE_BYTES_RUNNER"]) if runner else 4.0
    embed_bytes = embed * heads * (2.0 if runner else 4.0)
    # fp32 weights (the runner's fitted LORA_BYTES: with its bf16 casts); the gradients are parts of a phase
    lora_bytes = lora * (k.get("LORA_BYTES", 4.0) + opt)
    save_total = save * (save_bytes + opt)
    parts = {}
    if sharded:  # FSDP2: each process keeps 1/N of weights, grads and optimizer state, and gathers one unit
        n = nproc
        gathered = max(layer_params * per_param + lora_layer * 4.0, embed * heads * (2.0 if runner else 4.0))
        parts[f"weights, grads, optimizer: 1/{n} shard"] = (base + embed_bytes + lora_bytes + save_total) / n
        parts["gathered for compute (one unit and its prefetch)"] = 2 * gathered
        paged = (lora + save) * paged_per / n
    else:
        parts["base (4-bit linears)" if four_bit else f"base ({'bf16' if half else 'fp32'} linears)"] = base
        parts["embeddings + lm_head (bf16)" if runner else "embeddings + lm_head (fp32)"] = embed_bytes
        # the gradients are parts of the phase at the peak (runner_phases, hf_phases), not of these
        parts["LoRA weights, optimizer"] = lora_bytes
        parts["modules_to_save weights, optimizer"] = save_total
        paged = (lora + save) * paged_per
        if nproc > 1:
            parts["DDP gradient buckets"] = lora * 4.0 + save * (grad_bytes if in_place else 4.0)
    held = cfg["gradient_accumulation_steps"] > 1  # every gradient lives from the first micro batch to the step
    if runner:
        head, embed_trained = "lm_head" in saves, "embed_tokens" in saves
        save_grad = grad_bytes if in_place else 4.0
        # head_loss.py for an fp32 lm_head copy on a bf16 stream: the weight's bf16 cast and a product buffer
        cast = 4.0 * embed if head and not in_place and half else 0.0
        phase = runner_phases(shape, k, tokens, min(cfg["loss_chunk_tokens"], tokens), dropout, gc_on, lora, head,
                              embed_trained, save_grad, cast, nproc if sharded else 1, held)
        parts.update(max(phase.values(), key=lambda p: sum(p.values())))
        parts["fixed (workspaces, kernels' buffers)"] = k["FIXED_GIB"] * GiB
    else:
        if held:  # the fp32 gradients live from the first micro batch to the step, through every later micro
            # batch's peak (measured on the H200, issue #17's table at accumulation 4 against the grid's 1: +0.68 GiB
            # with LoRA r64 only, +4.49 with modules_to_save — 4 B a parameter)
            parts["gradients held across micro batches"] = (4.0 * lora + 4.0 * save) / (nproc if sharded else 1)
        parts["fixed (workspaces, kernels' buffers)"] = (k["FIXED_GIB"] * GiB
                                                         + k.get("FIXED_HEAD", 0.0) * shape.vocab * shape.hidden)
        phase = hf_phases(shape, k, lora, save, "lm_head" in saves, b, s, gc_on, dropout,
                          nproc if sharded else 1, held=held)
        parts.update(max(phase.values(), key=lambda p: sum(p.values())))
    # The caching allocator's slack grows with the largest blocks freed and split again: the fp32 logits of
    # one loss (the whole batch for the HF engines, one chunk for the runner) and the modules_to_save copies'
    # gradients, allocated and freed every step (measured: 0.5-20 GiB over the 2026-11-30 H200 grid).
    loss_tokens = min(cfg["loss_chunk_tokens"], tokens) if runner else tokens
    rk = {n: k.get(n + "_NOGC", v) if not gc_on else v for n, v in k.items()}
    reserve = (rk["RESERVE_FRAC"] * sum(parts.values()) + rk["RESERVE_GIB"] * GiB
               + rk["RESERVE_LOGITS"] * 4.0 * loss_tokens * shape.vocab  # every rank computes its own batch's
               + rk["RESERVE_SAVE"] * (grad_bytes if in_place else 4.0) * save / (nproc if sharded else 1)
               + rk.get("RESERVE_LAYER", 0.0) * 2.0 * layer_params)  # a layer's weights in bf16: the size of the
    # blocks a layer's forward and backward allocate and free (dequantized weights, activations' tensors)
    return Estimate(lora, save, lora * 2 + save * 2, lora * 4 + save * 4, parts, engine, reserve, paged,
                    CONTEXT_BYTES, nproc, sharded, allocator)


def gpus_to_fit(shape: Shape, cfg: dict, free: float, engine: str = "runner", most: int = 8,
                allocator: str = "expandable") -> int | None:
    """The fewest GPUs (each with `free` bytes) that a run sharded with FSDP over them fits on, or None."""
    for n in range(2, most + 1):
        if estimate(shape, dict(cfg, fsdp=True), engine=engine, nproc=n, allocator=allocator).needed <= free:
            return n
    return None


def ways_to_fit(shape: Shape, cfg: dict, free: float, engine: str = "runner", nproc: int = 1,
                allocator: str = "expandable") -> list[str]:
    """Concrete changes that bring what the run needs (card + margin) under `free`: each single change that
    is enough on its own, else the cheapest combination (drop modules_to_save, checkpointing, halve the micro
    batch keeping the effective batch, then halve the sequence length)."""
    steps = []
    if cfg["lora_modules_to_save"]:
        steps.append(("lora_modules_to_save: [] (only needed for new tokens)", {"lora_modules_to_save": []}))
    if not cfg["gradient_checkpointing"]:
        steps.append(("gradient_checkpointing: true", {"gradient_checkpointing": True}))
    b, accum, s = cfg["micro_batch_size"], cfg["gradient_accumulation_steps"], cfg["sequence_len"]
    while b > 1:
        b, accum = b // 2, accum * 2
        steps.append((f"micro_batch_size: {b} with gradient_accumulation_steps: {accum} (same effective batch)",
                      {"micro_batch_size": b, "gradient_accumulation_steps": accum}))
    while s > 256:
        s //= 2
        steps.append((f"sequence_len: {s}", {"sequence_len": s}))

    def need(c: dict) -> float:
        return estimate(shape, c, engine=engine, nproc=nproc, allocator=allocator).needed

    single = [f"{label} → {need(dict(cfg, **change)) / GiB:.1f} GiB" for label, change in steps
              if need(dict(cfg, **change)) <= free]
    if single:
        return single
    merged, labels = dict(cfg), []
    for label, change in steps:
        merged.update(change)
        labels.append(label)
        total = need(merged)
        if total <= free:
            return [" + ".join(labels) + f" → {total / GiB:.1f} GiB"]
    return []
