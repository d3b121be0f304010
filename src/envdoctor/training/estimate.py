"""Memory and size arithmetic for a QLoRA run, from the model's config.json alone.

Peak GPU memory (torch's max_memory_allocated, the bf16 compute of the seed's config) is the sum of:
  base      4-bit linears: 0.5 B/param + quantisation constants (NF4 blocks of 64; with double quant
            ~0.016 B/param, else 0.0625)
  embed     embed_tokens and lm_head: fp32 after peft's prepare_model_for_kbit_training (4 B/param);
            bf16 in envdoctor's runner, which does not upcast the frozen base (2 B/param)
  lora      LoRA weights fp32 + their grads (8 B/param) + optimizer state (AdamW 8 B/param; the 8-bit
            ones 2 B/param, paged ones outside allocated memory: 0)
  save      modules_to_save copies: fp32 weights + grads + optimizer state, as for LoRA
  act       activations: with gradient checkpointing, each layer's input (bf16) plus one layer's
            recompute and its attention; without, every layer's saved tensors and attention probabilities
  logits    B × S × vocab × LOGIT_BYTES for a full-logits loss (axolotl, a plain peft loop); the runner's
            chunked cross-entropy holds one chunk: loss_chunk_tokens × vocab × CHUNK_BYTES
Two engines: "peft" (the plain loop and axolotl: what was calibrated) and "runner" (envdoctor's runner).
The constants marked CALIBRATED come from runs on an H200 (bench/calibrate_memory.py); the optimizer
state of non-paged optimizers and lora_dropout: 0 are accounted by the formula, not measured.
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1024 ** 3
# CALIBRATED on an H200 (bench/results/h200-llama8b-calibration.json, fitted by bench/fit_memory.py on
# 4 grid points, within ±3 % on the 5 held-out ones):
ACT_SCALE = 1.417        # × the saved elements per token per layer counted in _layer_elements()
ATT_GC = 13.0            # bytes per (batch × heads × seq²): one layer's attention, recomputed, in backward
ATT_SAVED = 4.0          # bytes per (batch × heads × seq²) per layer without checkpointing (fp32 probs)
LOGIT_BYTES = 2.745      # bytes per logit element at the peak (loss and its gradient)
SAVE_BYTES = 5.22        # bytes per modules_to_save parameter beyond the base copy (weights + grads)
QUANT_CONST = {True: 0.0159, False: 0.0625}
# The runner (bf16 residual stream, SDPA attention without a seq² buffer, chunked loss). Checkpointed, its
# peak is the layer inputs plus the larger of one layer's recompute and one loss chunk's logits.
# CALIBRATED on an H200 (bench/results/h200-llama8b-calibration-runner.json, bench/fit_memory.py --engine
# runner: 6 fit points, 8 held out):
CHUNK_BYTES = 7.8         # bytes per logit of one chunk (bf16 + fp32 logits, fp32 gradient)
ACT_RUNNER = 1.16         # × _layer_elements × 2 bytes per token: one layer recomputed in backward
ACT_RUNNER_FULL = 1.10    # the same per layer, all layers kept (no checkpointing)
SAVE_BYTES_RUNNER = 9.5   # per modules_to_save parameter: fp32 copy + fp32 grad + a transient
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


def _layer_elements(shape: Shape, dropout: bool) -> float:
    """Tensors one decoder layer saves for backward, in elements per token: attention (norm in/out, q, k,
    v, output), MLP (norm in/out, gate, up, act, product) and, with LoRA dropout, each adapter's dropped
    input. ACT_SCALE turns this count into what is measured."""
    h, kv, i = shape.hidden, shape.kv_heads * shape.head_dim, shape.intermediate
    return 13 * h + 2 * kv + 5 * i + ((6 * h + i) if dropout else 0)


def estimate(shape: Shape, cfg: dict, micro_batch: int | None = None, seq: int | None = None,
             engine: str = "runner") -> Estimate:
    """`cfg` is a resolved config (training.config: every key present, defaults filled)."""
    b = micro_batch or cfg["micro_batch_size"]
    s = seq or cfg["sequence_len"]
    r = cfg["lora_r"]
    lin = shape.linears()
    targets = set(lin) if cfg["lora_target_linear"] else set(cfg["lora_target_modules"])
    lora = shape.layers * sum(r * (i + o) for name, (i, o) in lin.items() if name in targets)
    embed = shape.vocab * shape.hidden
    heads = 1 if shape.tied else 2
    saves = cfg["lora_modules_to_save"]
    save = sum(embed for m in saves if m in ("embed_tokens", "lm_head"))
    if shape.tied and {"embed_tokens", "lm_head"} <= set(saves):
        save = embed
    opt = OPT_BYTES.get(cfg["optimizer"], 8.0)
    four_bit = cfg["load_in_4bit"]
    half = cfg["bf16"] is not False  # "auto": bf16 on the GPUs this estimate is for
    base_params = shape.layers * sum(i * o for i, o in lin.values())
    base = base_params * ((0.5 + QUANT_CONST[cfg["bnb_4bit_use_double_quant"]]) if four_bit
                         else 2.0 if half else 4.0)
    tokens = b * s
    per_layer = ACT_SCALE * _layer_elements(shape, cfg["lora_dropout"] > 0)
    att = b * shape.heads * s * s
    if cfg["gradient_checkpointing"]:
        act = tokens * 2 * (shape.layers * shape.hidden + per_layer) + ATT_GC * att
    else:
        act = shape.layers * (tokens * 2 * per_layer + ATT_SAVED * att)
    runner = engine == "runner"
    chunk = min(cfg["loss_chunk_tokens"], tokens)
    if runner:
        elems = 2 * _layer_elements(shape, cfg["lora_dropout"] > 0)
        loss_phase = CHUNK_BYTES * chunk * shape.vocab
        if cfg["gradient_checkpointing"]:  # the backward peak is one layer's recompute or one chunk
            layer_phase = ACT_RUNNER * tokens * elems
            act = tokens * 2 * shape.layers * shape.hidden + (layer_phase if layer_phase >= loss_phase else 0.0)
            loss_phase = loss_phase if loss_phase > layer_phase else 0.0
        else:
            act = ACT_RUNNER_FULL * shape.layers * tokens * elems
    parts = {
        "base (4-bit linears)" if four_bit else f"base ({'bf16' if half else 'fp32'} linears)": base,
        "embeddings + lm_head (bf16)" if runner else "embeddings + lm_head (fp32)": embed * heads * (2.0 if runner else 4.0),
        "LoRA weights, grads, optimizer": lora * (8.0 + opt),
        "modules_to_save weights, grads, optimizer": save * ((SAVE_BYTES_RUNNER if runner else SAVE_BYTES) + opt),
        "activations": act,
        "logits and loss": loss_phase if runner else tokens * shape.vocab * LOGIT_BYTES,
    }
    return Estimate(lora, save, lora * 2 + save * 2, lora * 4 + save * 4, parts)


def ways_to_fit(shape: Shape, cfg: dict, free: float, engine: str = "runner") -> list[str]:
    """Concrete changes that bring the peak under `free`: each single change that is enough on its own,
    else the cheapest combination (drop modules_to_save, checkpointing, halve the micro batch keeping the
    effective batch, then halve the sequence length)."""
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
    def peak(c: dict) -> float:
        return estimate(shape, c, engine=engine).peak

    single = [f"{label} → {peak(dict(cfg, **change)) / GiB:.1f} GiB" for label, change in steps
              if peak(dict(cfg, **change)) < free]
    if single:
        return single
    merged, labels = dict(cfg), []
    for label, change in steps:
        merged.update(change)
        labels.append(label)
        total = peak(merged)
        if total < free:
            return [" + ".join(labels) + f" → {total / GiB:.1f} GiB"]
    return []
