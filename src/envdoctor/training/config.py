"""Training configs: the seed's axolotl-style YAML, validated before anything loads. Every error is
reported at once with its key; unknown keys are warnings (axolotl has many we do not use)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

REQUIRED = {"base_model": str, "datasets": list, "sequence_len": int, "output_dir": str, "lora_r": int,
            "lora_alpha": (int, float), "lora_target_modules": list, "learning_rate": (int, float),
            "num_epochs": int, "micro_batch_size": int}
OPTIONAL = {"val_set_size": (int, float), "seed": int, "load_in_4bit": bool, "adapter": str,
            "bnb_4bit_quant_type": str, "bnb_4bit_compute_dtype": str, "bnb_4bit_use_double_quant": bool,
            "lora_dropout": (int, float), "lora_modules_to_save": list, "gradient_accumulation_steps": int,
            "optimizer": str, "gradient_checkpointing": bool, "bf16": (bool, str), "fp16": bool,
            "warmup_steps": int, "warmup_ratio": (int, float), "save_steps": int, "chunk_overlap": int,
            "weight_decay": (int, float), "model_config": dict, "tokenizer": str, "sample_packing": bool,
            "loss_chunk_tokens": int, "fsdp": bool}
CHOICES = {"adapter": {"qlora", "lora"}, "bnb_4bit_quant_type": {"nf4", "fp4"},
           "bnb_4bit_compute_dtype": {"bfloat16", "float16", "float32"},
           "optimizer": {"paged_adamw_8bit", "adamw_8bit", "adamw_torch", "adamw_bnb_8bit"},
           "tokenizer": {"train-bpe"}}


@dataclass
class TrainConfig:
    path: Path
    data: dict
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def resolved(self) -> dict:
        """What the runner reads: paths made absolute (datasets relative to the config file)."""
        out = dict(self.data)
        out["config_dir"] = str(self.path.parent.resolve())
        out["output_dir"] = str(Path(self.data["output_dir"]).expanduser().resolve())
        out.setdefault("gradient_accumulation_steps", 1)
        return out


def _is(value, kind) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)


def load(path: str | Path) -> TrainConfig:
    import yaml
    path = Path(path)
    cfg = TrainConfig(path, {})
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        cfg.errors.append(f"{path}: cannot read: {exc.strerror}")
        return cfg
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        cfg.errors.append(f"{path}: not valid YAML" + (f" (line {mark.line + 1})" if mark else "") +
                          f": {getattr(exc, 'problem', exc)}")
        return cfg
    if not isinstance(data, dict):
        cfg.errors.append(f"{path}: expected a mapping of keys, got {type(data).__name__}")
        return cfg
    return load_data(path, data)


def load_data(path: str | Path, data: dict) -> TrainConfig:
    """Validate a config's keys (from `path`, with any command-line overrides already applied)."""
    path = Path(path)
    cfg = TrainConfig(path, data)
    for key, kind in REQUIRED.items():
        if key not in data:
            cfg.errors.append(f"{path}: {key}: required")
    for key, value in data.items():
        kind = REQUIRED.get(key) or OPTIONAL.get(key)
        if kind is None:
            cfg.warnings.append(f"{path}: {key}: unknown key, ignored")
            continue
        names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        if not _is(value, kind):
            cfg.errors.append(f"{path}: {key}: expected {names}, got {value!r}")
        elif key in CHOICES and value not in CHOICES[key]:
            cfg.errors.append(f"{path}: {key}: expected one of {', '.join(sorted(CHOICES[key]))}, got {value!r}")
    for key in ("sequence_len", "lora_r", "num_epochs", "micro_batch_size", "gradient_accumulation_steps"):
        if _is(data.get(key), int) and data[key] < 1:
            cfg.errors.append(f"{path}: {key}: expected a positive number, got {data[key]}")
    if data.get("fsdp") is True and data.get("load_in_4bit") is True:
        cfg.errors.append(f"{path}: fsdp: the runner shards bf16 LoRA only (set load_in_4bit: false); sharding a "
                          "4-bit base needs FSDP1 with bnb_4bit_quant_storage: use --backend axolotl with an FSDP "
                          "config, or DDP (the default) when the 4-bit model fits one GPU")
    if _is(data.get("learning_rate"), (int, float)) and not 0 < data["learning_rate"] < 1:
        cfg.errors.append(f"{path}: learning_rate: expected between 0 and 1, got {data['learning_rate']}")
    for i, d in enumerate(data.get("datasets") or [] if isinstance(data.get("datasets"), list) else []):
        if not isinstance(d, dict) or not isinstance(d.get("path"), str):
            cfg.errors.append(f"{path}: datasets[{i}]: expected a mapping with a path, got {d!r}")
        elif not (path.parent / d["path"]).exists() and not Path(d["path"]).exists():
            cfg.errors.append(f"{path}: datasets[{i}].path: {d['path']} does not exist "
                              f"(relative to {path.parent})")
    if data.get("model_config") is None and data.get("tokenizer") == "train-bpe":
        cfg.errors.append(f"{path}: tokenizer: train-bpe needs model_config (a model built from a config)")
    return cfg
