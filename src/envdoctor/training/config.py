"""Training configs: the seed's axolotl-style YAML, validated against one schema before anything loads.

`SCHEMA` is the one table of every key the runner reads: its type, its default, its allowed values or
bounds, and a line of what it means. Defaults are axolotl's documented ones (users bring axolotl configs:
a key left out means what it means in axolotl). `TrainConfig.resolved()` fills every default, and that
resolved file is all the runner and the memory estimator read: neither carries a default of its own.
Every error is reported at once with its key; unknown keys are warnings and are not passed on (they
may hold secrets: `hub_token`, `wandb_api_key`)."""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REQUIRED = object()   # a key without a default
DERIVED = object()    # a default computed from other keys at resolution (see _derived)
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Key:
    name: str
    kind: type | tuple
    default: Any
    doc: str
    choices: tuple = ()
    bounds: tuple[float, float] | None = None   # inclusive, for numbers


_NUM = (int, float)
# fmt: off
SCHEMA: tuple[Key, ...] = (
    Key("base_model", str, REQUIRED, "a local folder or a Hugging Face id (in the local cache)"),
    Key("model_config", dict, None, "build the model from this config (random weights) instead of loading base_model"),
    Key("tokenizer", str, None, "train-bpe: learn a byte-level BPE from the corpus (models built from model_config)",
        choices=("train-bpe",)),
    Key("datasets", list, REQUIRED, "[{path: ...}]: text files, folders or jsonl, relative to the config file"),
    Key("output_dir", str, "./model-out", "where checkpoints, the adapter and the logs go (relative to the "
        "working directory)"),
    Key("sequence_len", int, 512, "tokens per training chunk", bounds=(8, 1 << 20)),
    Key("val_set_size", _NUM, 0.0, "share (<1) or number (≥1) of chunks held out for validation", bounds=(0, 1e9)),
    Key("seed", int, 42, "data order, LoRA init, dropout (axolotl leaves it to HF Trainer's 42)",
        bounds=(0, 2**32 - 1)),
    Key("sample_packing", bool, False, "join documents before chunking (no padding; attention crosses documents)"),
    Key("chunk_overlap", int, DERIVED, "tokens shared by neighbouring chunks (default sequence_len // 8)",
        bounds=(0, 1 << 20)),
    Key("adapter", str, REQUIRED, "lora, or qlora (LoRA over a 4-bit base: needs load_in_4bit: true)",
        choices=("lora", "qlora")),
    Key("load_in_4bit", bool, False, "quantize the frozen base to 4 bits with bitsandbytes"),
    Key("bnb_4bit_quant_type", str, "nf4", "4-bit data type", choices=("nf4", "fp4")),
    Key("bnb_4bit_compute_dtype", str, DERIVED, "matmul dtype of 4-bit layers (default: bfloat16 with bf16, "
        "else float32)", choices=("bfloat16", "float16", "float32")),
    Key("bnb_4bit_use_double_quant", bool, True, "quantize the quantization constants too"),
    Key("lora_r", int, REQUIRED, "adapter rank", bounds=(1, 65536)),
    Key("lora_alpha", _NUM, REQUIRED, "scaling: usually 2 × lora_r", bounds=(1e-6, 1e7)),
    Key("lora_dropout", _NUM, 0.0, "dropout on the adapter's input", bounds=(0, 0.99)),
    Key("lora_target_modules", list, DERIVED, "module names to adapt (q_proj, …); required unless lora_target_linear"),
    Key("lora_target_linear", bool, False, "adapt every linear layer (peft's all-linear)"),
    Key("lora_modules_to_save", list, DERIVED, "whole modules trained and saved (embed_tokens, lm_head): only for "
        "new tokens; default none"),
    Key("learning_rate", _NUM, REQUIRED, "peak learning rate", bounds=(1e-12, 1.0)),
    Key("lr_scheduler", str, "cosine", "schedule after warm-up", choices=("cosine", "linear", "constant")),
    Key("warmup_steps", int, DERIVED, "optimizer steps of linear warm-up (default from warmup_ratio)",
        bounds=(0, 1 << 31)),
    Key("warmup_ratio", _NUM, None, "warm-up as a share of all steps (default none: no warm-up unless "
        "warmup_steps)", bounds=(0, 1)),
    Key("weight_decay", _NUM, 0.0, "AdamW weight decay", bounds=(0, 10)),
    Key("optimizer", str, "adamw_torch_fused", "paged/8-bit AdamW need a CUDA GPU (else torch AdamW)",
        choices=("adamw_torch_fused", "adamw_torch", "paged_adamw_8bit", "adamw_8bit", "adamw_bnb_8bit")),
    Key("num_epochs", int, 1, "passes over the training chunks", bounds=(1, 100000)),
    Key("micro_batch_size", int, 1, "chunks per forward/backward, per process", bounds=(1, 65536)),
    Key("gradient_accumulation_steps", int, 1, "micro batches per optimizer step (all processes together)",
        bounds=(1, 65536)),
    Key("gradient_checkpointing", bool, False, "recompute activations in backward: far less memory, ~30 % slower"),
    Key("bf16", (bool, str), "auto", "bfloat16 weights/compute: auto = where the GPU supports it (never on a CPU)",
        choices=(True, False, "auto")),
    Key("fp16", bool, False, "not supported by the runner (bf16 or fp32); kept for axolotl configs"),
    Key("save_steps", int, None, "optimizer steps between mid-epoch checkpoints (default: one per epoch)",
        bounds=(1, 1 << 31)),
    Key("loss_chunk_tokens", int, 1024, "tokens per chunk of the chunked cross-entropy", bounds=(16, 1 << 24)),
    Key("fsdp", (bool, list), False, "shard over the processes (FSDP2; a 4-bit base too: its packed weights are sharded); an axolotl list = on"),
)
# fmt: on
KEYS = {k.name: k for k in SCHEMA}
# Written into the resolved file by envdoctor itself, not by the user.
RESOLVED_EXTRA = ("config_dir", "config_path", "schema_version")


def _derived(data: dict) -> dict:
    """The defaults that depend on other keys."""
    bf16, seq = data.get("bf16", "auto"), data.get("sequence_len")
    seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else KEYS["sequence_len"].default
    return {"chunk_overlap": seq // 8,  # (an invalid sequence_len is config.valid's to report)
            "bnb_4bit_compute_dtype": "float32" if bf16 is False else "bfloat16",
            "lora_target_modules": [],
            "lora_modules_to_save": [],
            "warmup_steps": None}


@dataclass
class TrainConfig:
    path: Path
    data: dict
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def resolved(self) -> dict:
        """Every schema key with its default filled, paths made absolute (datasets relative to the config
        file), unknown keys dropped: what the runner and the estimator read."""
        derived = _derived(self.data)
        out: dict[str, Any] = {}
        for k in SCHEMA:
            if k.name in self.data and self.data[k.name] is not None:
                out[k.name] = self.data[k.name]
            elif k.default is DERIVED:
                out[k.name] = derived[k.name]
            elif k.default is REQUIRED:
                out[k.name] = None  # only reached for an invalid config (estimates of partial configs)
            else:
                out[k.name] = k.default
        here = self.path.parent.resolve()
        out["config_dir"], out["config_path"] = str(here), str(self.path.resolve())
        out["schema_version"] = SCHEMA_VERSION
        # output_dir is relative to the working directory, as in axolotl (the demo's config lies inside the
        # installed package); datasets are relative to the config file, which travels with its corpus.
        out["output_dir"] = str(Path(out["output_dir"]).expanduser().resolve())
        if isinstance(out["datasets"], list):
            out["datasets"] = [dict(d, path=str(here / Path(d["path"]).expanduser()))
                               if isinstance(d, dict) and isinstance(d.get("path"), str) else d
                               for d in out["datasets"]]
        if isinstance(out["fsdp"], list):  # axolotl writes fsdp: [full_shard, auto_wrap]
            out["fsdp"] = bool(out["fsdp"])
        return out


def _is(value, kind) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, kinds)


def _type_names(kind) -> str:
    if kind == _NUM:
        return "a number"
    return "/".join({"int": "an integer", "float": "a number", "str": "a string", "bool": "true/false",
                     "list": "a list", "dict": "a mapping"}[k.__name__] for k in (kind if isinstance(kind, tuple)
                                                                                   else (kind,)))


def _num(x) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


def load(path: str | Path) -> TrainConfig:
    import yaml
    path = Path(path)
    cfg = TrainConfig(path, {})
    try:
        raw = path.read_bytes()
    except OSError as exc:
        cfg.errors.append(f"{path}: cannot read: {exc.strerror}")
        return cfg
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        cfg.errors.append(f"{path}: not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r}): "
                          "a training config is a YAML file")
        return cfg
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        cfg.errors.append(f"{path}: not a training config: nested too deeply to read")
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


_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _yaml11_floats(data: dict) -> dict:
    """YAML 1.1 (PyYAML) reads `3e-4` as a string; axolotl (pydantic) takes it as the number it is. So do
    we, for keys that hold non-integer numbers only."""
    out = dict(data)
    for key, value in data.items():
        spec = KEYS.get(key) if isinstance(key, str) else None
        if spec and spec.kind == _NUM and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            out[key] = float(value)
    return out


def load_data(path: str | Path, data: dict) -> TrainConfig:
    """Validate a config's keys (from `path`, with any command-line overrides already applied)."""
    path = Path(path)
    data = _yaml11_floats(data)
    cfg = TrainConfig(path, data)
    for key, value in data.items():
        spec = KEYS.get(key) if isinstance(key, str) else None
        if spec is None:
            if key not in RESOLVED_EXTRA:
                near = difflib.get_close_matches(str(key), list(KEYS), n=1, cutoff=0.8)
                cfg.warnings.append(f"{path}: {key}: unknown key, ignored (not passed to the runner)"
                                    + (f"; did you mean {near[0]}?" if near else ""))
            continue
        if value is None and spec.default is not REQUIRED:
            continue  # `key:` with no value means the default, as in axolotl
        problem = _problem(spec, value)
        if problem:
            cfg.errors.append(f"{path}: {key}: {problem}")
    for spec in SCHEMA:
        if spec.default is REQUIRED and data.get(spec.name) is None:
            cfg.errors.append(f"{path}: {spec.name}: required ({spec.doc})")
    _cross_checks(path, data, cfg.errors)
    return cfg


def _problem(spec: Key, value) -> str | None:
    if not _is(value, spec.kind):
        return f"expected {_type_names(spec.kind)}, got {_shown(value)}"
    if spec.choices and not isinstance(value, (list, dict)) and value not in spec.choices:
        return f"expected one of {', '.join(str(c).lower() if isinstance(c, bool) else c for c in spec.choices)}, " \
               f"got {_shown(value)}"
    if spec.bounds and isinstance(value, (int, float)):
        lo, hi = spec.bounds
        if not lo <= value <= hi:
            return f"expected a value from {_num(lo)} to {_num(hi)}, got {_shown(value)}"
    return None


def _cross_checks(path: Path, data: dict, errors: list[str]) -> None:
    adapter, four_bit = data.get("adapter"), data.get("load_in_4bit") is True
    if adapter == "qlora" and not four_bit:  # axolotl refuses the same
        errors.append(f"{path}: adapter: qlora needs load_in_4bit: true (or use adapter: lora)")
    if data.get("fp16") is True:
        errors.append(f"{path}: fp16: the runner trains in bf16 (bf16: true / auto) or fp32; remove fp16")
    if not data.get("lora_target_modules") and data.get("lora_target_linear") is not True:
        errors.append(f"{path}: lora_target_modules: required (a list like [q_proj, v_proj]) unless "
                      "lora_target_linear: true")
    for key in ("lora_target_modules", "lora_modules_to_save"):
        value = data.get(key)
        if isinstance(value, list) and not all(isinstance(v, str) and v for v in value):
            errors.append(f"{path}: {key}: expected a list of module names, got {_shown(value)}")
    datasets = data.get("datasets")
    if isinstance(datasets, list):
        if not datasets:
            errors.append(f"{path}: datasets: expected at least one entry with a path")
        for i, d in enumerate(datasets):
            if not isinstance(d, dict) or not isinstance(d.get("path"), str) or not d["path"].strip():
                errors.append(f"{path}: datasets[{i}]: expected a mapping with a path, got {_shown(d)}")
            elif not (path.parent / Path(d["path"]).expanduser()).exists():
                hub = re.fullmatch(r"[\w.-]+/[\w.-]+", d["path"]) and not d["path"].startswith(".")
                errors.append(f"{path}: datasets[{i}].path: {d['path']} does not exist "
                              f"(paths are relative to the config file's folder, {path.parent.resolve()})"
                              + ("; a Hugging Face dataset id is not read by the runner: download its files "
                                 f"(hf download {d['path']} --repo-type dataset --local-dir DIR) and point path at "
                                 "them (text files, folders or jsonl with a text field)" if hub else ""))
    if data.get("warmup_steps") is not None and data.get("warmup_ratio") is not None:  # axolotl refuses it too
        errors.append(f"{path}: warmup_steps: set warmup_steps or warmup_ratio, not both")
    if data.get("model_config") is None and data.get("tokenizer") == "train-bpe":
        errors.append(f"{path}: tokenizer: train-bpe needs model_config (a model built from a config)")
    seq, overlap = data.get("sequence_len") or KEYS["sequence_len"].default, data.get("chunk_overlap")
    if isinstance(seq, int) and isinstance(overlap, int) and not isinstance(overlap, bool) and overlap >= seq:
        errors.append(f"{path}: chunk_overlap: expected less than sequence_len ({seq}), got {overlap}")


def resolve(data: dict, path: str | Path = "config.yaml") -> dict:
    """A config dict with every default filled (no validation): for benchmarks and estimates of a grid."""
    return TrainConfig(Path(path), data).resolved()


def schema_markdown() -> str:
    """The config reference (docs/training-config.md is this, checked by a test): one row per key."""
    def shown(default) -> str:
        if default is REQUIRED:
            return "**required**"
        if default is DERIVED:
            return "derived"
        return "`" + ("null" if default is None else str(default).lower() if isinstance(default, bool)
                      else str(default)) + "`"

    rows = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for k in SCHEMA:
        allowed = ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in k.choices) if k.choices \
            else (f"{_num(k.bounds[0])} – {_num(k.bounds[1])}" if k.bounds else "")
        rows.append(f"| `{k.name}` | {_type_names(k.kind)} | {shown(k.default)} | {allowed} | {k.doc} |")
    return "\n".join(rows) + "\n"
