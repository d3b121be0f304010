"""Memory and size arithmetic for a QLoRA run, from the model's config.json alone.

Peak GPU memory (torch's max_memory_allocated) is the sum of:
  base      4-bit linears: 0.5 B/param + quantisation constants (NF4 blocks of 64; with double quant
            ~0.016 B/param, else 0.0625)
  embed     embed_tokens and lm_head: fp32 after peft's prepare_model_for_kbit_training (4 B/param)
  lora      LoRA weights fp32 + their grads (8 B/param) + optimizer state (AdamW 8 B/param; the 8-bit
            ones 2 B/param, paged ones outside allocated memory: 0)
  save      modules_to_save copies: fp32 weights + grads + optimizer state, as for LoRA
  act       activations: with gradient checkpointing, each layer's input (bf16) plus one layer's
            recompute; without, every layer's saved tensors — per token per layer ACT_ELEMS elements
  logits    B × S × vocab × LOGIT_BYTES: the fp32 logits, their log-softmax and their gradient
The two constants marked CALIBRATED are fitted to runs on an H200 (bench/calibrate_memory.py).
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1024 ** 3
# CALIBRATED: elements saved per token per decoder layer, as multiples of (hidden, kv, intermediate);
# and bytes per logit element.
ACT_H, ACT_KV, ACT_I = 13.0, 2.0, 5.0
LOGIT_BYTES = 12.0
DROPOUT_H = 6.0            # extra saved elements per token per layer when lora_dropout > 0 (×hidden), plus ACT_I/5
QUANT_CONST = {True: 0.0159, False: 0.0625}
OPT_BYTES = {"adamw_torch": 8.0, "adamw_8bit": 2.0, "adamw_bnb_8bit": 2.0, "paged_adamw_8bit": 0.0}


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @classmethod
    def from_config(cls, c: dict) -> "Shape":
        return cls(c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["num_attention_heads"],
                   c.get("num_key_value_heads", c["num_attention_heads"]), c["vocab_size"],
                   bool(c.get("tie_word_embeddings", False)))

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
    parts: dict[str, float]   # bytes by part

    @property
    def trainable(self) -> int:
        return self.lora_params + self.save_params

    @property
    def peak(self) -> float:
        return sum(self.parts.values())


def estimate(shape: Shape, cfg: dict, micro_batch: int | None = None, seq: int | None = None) -> Estimate:
    b = micro_batch or cfg.get("micro_batch_size", 1)
    s = seq or cfg.get("sequence_len", 2048)
    r = cfg.get("lora_r", 8)
    targets = set(cfg.get("lora_target_modules") or [])
    lin = shape.linears()
    lora = shape.layers * sum(r * (i + o) for name, (i, o) in lin.items() if name in targets)
    embed = shape.vocab * shape.hidden
    heads = 1 if shape.tied else 2
    saves = cfg.get("lora_modules_to_save") or []
    save = sum(embed for m in saves if m in ("embed_tokens", "lm_head"))
    if shape.tied and {"embed_tokens", "lm_head"} <= set(saves):
        save = embed
    opt = OPT_BYTES.get(cfg.get("optimizer", "adamw_torch"), 8.0)
    four_bit = cfg.get("load_in_4bit", True)
    base_params = shape.layers * sum(i * o for i, o in lin.values())
    base = base_params * ((0.5 + QUANT_CONST[cfg.get("bnb_4bit_use_double_quant", True)]) if four_bit else 2.0)
    tokens = b * s
    per_layer = ACT_H * shape.hidden + ACT_KV * shape.kv_heads * shape.head_dim + ACT_I * shape.intermediate
    if cfg.get("lora_dropout", 0) > 0:
        per_layer += DROPOUT_H * shape.hidden + shape.intermediate
    if cfg.get("gradient_checkpointing", True):
        act = tokens * 2 * (shape.layers * shape.hidden + per_layer)
    else:
        act = tokens * 2 * shape.layers * per_layer
    parts = {
        "base (4-bit linears)" if four_bit else "base (bf16 linears)": base,
        "embeddings + lm_head (fp32)": embed * heads * 4.0,
        "LoRA weights, grads, optimizer": lora * (8.0 + opt),
        "modules_to_save weights, grads, optimizer": save * (8.0 + opt),
        "activations": act,
        "logits and loss": tokens * shape.vocab * LOGIT_BYTES,
    }
    return Estimate(lora, save, lora * 2 + save * 2, lora * 4 + save * 4, parts)


def ways_to_fit(shape: Shape, cfg: dict, free: float) -> list[str]:
    """Concrete changes that bring the peak under `free`, cheapest first."""
    out = []
    if cfg.get("lora_modules_to_save"):
        c = dict(cfg, lora_modules_to_save=[])
        if estimate(shape, c).peak < free:
            out.append(f"drop lora_modules_to_save ({estimate(shape, c).peak / GiB:.1f} GiB): only needed for new tokens")
    if not cfg.get("gradient_checkpointing", True):
        c = dict(cfg, gradient_checkpointing=True)
        if estimate(shape, c).peak < free:
            out.append(f"gradient_checkpointing: true ({estimate(shape, c).peak / GiB:.1f} GiB)")
    b, s = cfg.get("micro_batch_size", 1), cfg.get("sequence_len", 2048)
    while b > 1:
        b //= 2
        e = estimate(shape, cfg, micro_batch=b)
        if e.peak < free:
            accum = cfg.get("gradient_accumulation_steps", 1) * (cfg.get("micro_batch_size", 1) // b)
            out.append(f"micro_batch_size: {b} with gradient_accumulation_steps: {accum} ({e.peak / GiB:.1f} GiB, "
                       "same effective batch)")
            break
    while s > 256:
        s //= 2
        e = estimate(shape, cfg, seq=s)
        if e.peak < free:
            out.append(f"sequence_len: {s} ({e.peak / GiB:.1f} GiB)")
            break
    return out
