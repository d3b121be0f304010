"""Facts for `envdoctor check --model DIR`: a model folder as vLLM or transformers will read it —
config, weights index against the shards' own headers, tokenizer and chat template, stray adapter files;
then the target interpreter loads config and tokenizer, and asks vLLM whether it knows the architecture."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from envdoctor.context import Context
from envdoctor.facts.gpu import SMOKE_MARK
from envdoctor.safetensors_header import HeaderError, header_length, read_header
from envdoctor.system import System

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
LOAD_SOURCE = """
import json, sys
out = {}
path = sys.argv[2]
try:
    from transformers import AutoConfig, AutoTokenizer
    out["config_class"] = type(AutoConfig.from_pretrained(path)).__name__
    tok = AutoTokenizer.from_pretrained(path)
    out["tokenizer_class"] = type(tok).__name__
    out["vocab"] = len(tok)
    out["chat_template"] = bool(getattr(tok, "chat_template", None))
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"[:500]
try:
    import importlib.util
    if importlib.util.find_spec("vllm") is not None:
        from vllm import ModelRegistry
        out["vllm_archs"] = sorted(ModelRegistry.get_supported_archs())
except Exception as exc:
    out["vllm_error"] = f"{type(exc).__name__}: {exc}"[:500]
print(json.dumps(out))
"""


@dataclass
class ModelDirFacts:
    path: str
    exists: bool = False
    config: dict | None = None
    config_error: str | None = None
    dtype: str | None = None
    shards: dict[str, int] = field(default_factory=dict)        # file → tensors in its header
    shard_errors: list[str] = field(default_factory=list)
    tensors: int = 0
    adapter_files: list[str] = field(default_factory=list)
    tokenizer_files: list[str] = field(default_factory=list)
    chat_template: bool = False
    generation_config: bool = False
    load: dict | None = None                                    # what the target interpreter said
    load_error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _shards(system: System, d: str, files: list[str], facts: ModelDirFacts) -> None:
    index_text = system.read_text(f"{d}/model.safetensors.index.json")
    if index_text is not None:
        try:
            weight_map = json.loads(index_text)["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            facts.shard_errors.append(f"model.safetensors.index.json: no weight_map ({type(exc).__name__})")
            return
        wanted: dict[str, set[str]] = {}
        for tensor, fname in weight_map.items():
            wanted.setdefault(fname, set()).add(tensor)
    else:
        wanted = {f: set() for f in files if f.endswith(".safetensors") and not f.startswith("adapter_model")}
        if not wanted:
            facts.shard_errors.append("no *.safetensors weights and no model.safetensors.index.json"
                                      + (" (only .bin weights: vLLM and transformers prefer safetensors)"
                                         if any(f.endswith(".bin") for f in files) else ""))
            return
    for fname, names in sorted(wanted.items()):
        head = system.read_head(f"{d}/{fname}", 8)
        if head is None:
            facts.shard_errors.append(f"{fname}: listed in the index but missing")
            continue
        full = system.read_head(f"{d}/{fname}", header_length(head[0]))
        try:
            header = read_header(full[0], full[1])
        except HeaderError as exc:
            facts.shard_errors.append(f"{fname}: {exc}")
            continue
        missing = names - set(header)
        if missing:
            facts.shard_errors.append(f"{fname}: {len(missing)} tensor(s) the index puts here are not in it, "
                                      f"e.g. {sorted(missing)[0]}")
        facts.shards[fname] = len(header)
        facts.tensors += len(header)


def probe_model_dir(system: System, ctx: Context) -> ModelDirFacts:
    d = ctx.model_dir.rstrip("/")
    facts = ModelDirFacts(d, exists=system.is_dir(d))
    if not facts.exists:
        return facts
    files = system.listdir(d)
    text = system.read_text(f"{d}/config.json")
    if text is None:
        facts.config_error = "config.json missing"
    else:
        try:
            facts.config = json.loads(text)
            facts.dtype = facts.config.get("dtype") or facts.config.get("torch_dtype")
        except ValueError as exc:
            facts.config_error = f"config.json is not valid JSON ({exc})"
    _shards(system, d, files, facts)
    facts.adapter_files = [f for f in files if f in ADAPTER_FILES]
    facts.tokenizer_files = [f for f in files if f in TOKENIZER_FILES]
    facts.generation_config = "generation_config.json" in files
    tok_cfg = system.read_text(f"{d}/tokenizer_config.json") or ""
    facts.chat_template = any(f.startswith("chat_template") for f in files) or '"chat_template"' in tok_cfg
    if facts.config is not None:
        res = system.run([ctx.python, "-c", LOAD_SOURCE, SMOKE_MARK, d], timeout=ctx.probe_timeout * 4,
                         env={**system.env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        try:
            facts.load = json.loads(res.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            facts.load_error = ("timed out" if res.timed_out else res.describe()) + \
                (f": {res.stderr.strip().splitlines()[-1]}" if res.stderr.strip() else "")
    return facts
