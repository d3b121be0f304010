"""Tokenizer, base model (4-bit NF4 where bitsandbytes can), LoRA adapters and the optimizer."""

from __future__ import annotations

import torch


def build_tokenizer(cfg: dict, docs: list[str]):
    if cfg.get("tokenizer") == "train-bpe":  # offline: a small byte-level BPE learned from the corpus itself
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        vocab = min(cfg["model_config"].get("vocab_size", 512), 4096)
        tok.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<pad>", "<s>", "</s>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
        # A plain-text template, so that the merged model can be served on a chat endpoint too.
        fast.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
        return fast
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(cfg["base_model"])
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def four_bit_works(device: str) -> str | None:
    """None if bitsandbytes runs an NF4 layer forward and backward here, else why not."""
    try:
        import bitsandbytes as bnb
        lin = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4").to(device)
        x = torch.randn(2, 64, device=device, requires_grad=True)
        lin(x).sum().backward()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means: no 4-bit here
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


def quantize_linears(model, cfg: dict, compute_dtype, device: str) -> int:
    """Replace the decoder's nn.Linear layers by bitsandbytes NF4 layers (what from_pretrained with a
    BitsAndBytesConfig does; needed for a model built from a config). lm_head stays unquantized."""
    import bitsandbytes as bnb
    count = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear) and child_name != "lm_head":
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=compute_dtype, quant_type=cfg.get("bnb_4bit_quant_type", "nf4"),
                                      compress_statistics=cfg.get("bnb_4bit_use_double_quant", True))
                q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False,
                                             quant_type=cfg.get("bnb_4bit_quant_type", "nf4"),
                                             compress_statistics=cfg.get("bnb_4bit_use_double_quant", True))
                if child.bias is not None:
                    q.bias = child.bias
                setattr(module, child_name, q.to(device))
                count += 1
    return count


def build_model(cfg: dict, tokenizer, device: str, notes: list[str], base_dir=None):
    """The peft model to train. A model built from `model_config` (random weights) is first saved
    unquantized to `base_dir`, when given: merging needs the base weights the adapter was trained on."""
    use_bf16 = cfg.get("bf16", True) and device.startswith("cuda")
    dtype = torch.bfloat16 if use_bf16 else torch.float32
    want_4bit = cfg.get("load_in_4bit", False)
    why_not = four_bit_works(device) if want_4bit else None
    if want_4bit and why_not:
        notes.append(f"4-bit NF4 is not available here ({why_not}): training plain LoRA on {dtype} weights")
    if cfg.get("model_config"):
        from transformers import LlamaConfig, LlamaForCausalLM
        # The model's vocabulary is the config's when larger (an 8B-shaped model with a demo tokenizer).
        mc = dict(cfg["model_config"], vocab_size=max(len(tokenizer), cfg["model_config"].get("vocab_size", 0)),
                  pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id)
        torch.manual_seed(cfg.get("seed", 0))
        # Built where it runs and in its dtype: an 8B shape is initialised on the GPU in bf16 (16 GB), not
        # in fp32 on the CPU.
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                model = LlamaForCausalLM(LlamaConfig(**mc))
        finally:
            torch.set_default_dtype(default)
        if base_dir is not None and not (base_dir / "config.json").exists():
            model.save_pretrained(base_dir, max_shard_size="2GB")
            tokenizer.save_pretrained(base_dir)
        if want_4bit and not why_not:
            n = quantize_linears(model, cfg, dtype, device)
            notes.append(f"{n} linear layers quantized to NF4 with bitsandbytes on {device}")
        model = model.to(device)
    else:
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.get("bnb_4bit_quant_type", "nf4"),
                                   bnb_4bit_compute_dtype=dtype,
                                   bnb_4bit_use_double_quant=cfg.get("bnb_4bit_use_double_quant", True)) \
            if want_4bit and not why_not else None
        model = AutoModelForCausalLM.from_pretrained(cfg["base_model"], dtype=dtype, quantization_config=quant,
                                                     device_map={"": device} if device.startswith("cuda") else None)
    return attach_lora(model, cfg, dtype)


def attach_lora(model, cfg: dict, dtype):
    """Freeze the base, turn on gradient checkpointing, add LoRA (and modules_to_save) per the config.

    Not peft's prepare_model_for_kbit_training: it casts every non-quantized weight to fp32, which for
    Llama-3's 128k vocabulary is 2 GiB more per embedding matrix and an fp32 residual stream. The frozen
    base stays in its dtype; only what trains is fp32."""
    from peft import LoraConfig, get_peft_model
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.get("gradient_checkpointing", False):
        # Explicitly, non-reentrant (no input-grad hook needed). With transformers 5 / peft 0.21 the kbit
        # preparation alone left it off: measured on an H200, 101 GiB peak instead of 16 (8B, 2 × 2048).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
    lora = LoraConfig(r=cfg["lora_r"], lora_alpha=cfg["lora_alpha"], lora_dropout=cfg.get("lora_dropout", 0.0),
                      target_modules=cfg["lora_target_modules"], modules_to_save=cfg.get("lora_modules_to_save") or None,
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    for p in model.parameters():  # LoRA weights are fp32 already; modules_to_save copies are not
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    if dtype != torch.float32:  # a trained fp32 embedding copy must not turn the residual stream into fp32
        model.get_input_embeddings().register_forward_hook(lambda _m, _i, out: out.to(dtype))
    return model


def build_optimizer(cfg: dict, model, device: str, notes: list[str]):
    params = [p for p in model.parameters() if p.requires_grad]
    name = cfg.get("optimizer", "adamw_torch")
    if name in ("paged_adamw_8bit", "adamw_8bit") and device.startswith("cuda"):
        import bitsandbytes as bnb
        cls = bnb.optim.PagedAdamW8bit if name.startswith("paged") else bnb.optim.AdamW8bit
        return cls(params, lr=cfg["learning_rate"], weight_decay=cfg.get("weight_decay", 0.0))
    if name != "adamw_torch":
        notes.append(f"optimizer {name} needs a CUDA GPU: using torch AdamW")
    return torch.optim.AdamW(params, lr=cfg["learning_rate"], weight_decay=cfg.get("weight_decay", 0.0))
