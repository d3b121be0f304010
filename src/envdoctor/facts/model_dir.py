"""Facts for `envdoctor check --model DIR`: a model folder as vLLM or transformers will read it —
config, weights index against the shards' own headers, tokenizer and chat template, stray adapter files;
then the target interpreter loads config and tokenizer, and asks vLLM whether it knows the architecture."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from envdoctor import target
from envdoctor.context import Context
from envdoctor.facts.gpu import SMOKE_MARK
from envdoctor.safetensors_header import HeaderError, header_length, read_header
from envdoctor.system import System

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


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
    merge_record: str | None = None   # None: not a merge; "verified"; else why the merge is not verified
    load: dict | None = None                                    # what the target interpreter said
    load_error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _plain_name(f: str) -> bool:
    """A shard named in an index is a file in the folder, not a path elsewhere."""
    return bool(f) and "/" not in f and "\\" not in f and f not in (".", "..") and "\0" not in f


def _show(v) -> str:
    if isinstance(v, dict):
        bad = next((f for f in v.values() if not (isinstance(f, str) and _plain_name(f))), None)
        return f"a shard name {bad!r:.60}"
    return "nothing" if v is None else f"{type(v).__name__} {v!r:.40}"


def _shards(system: System, d: str, files: list[str], facts: ModelDirFacts) -> None:
    index_text = system.read_text(f"{d}/model.safetensors.index.json")
    if index_text is not None:
        try:
            index = json.loads(index_text)
        except (ValueError, RecursionError) as exc:
            facts.shard_errors.append(f"model.safetensors.index.json: not valid JSON ({exc})")
            return
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) and _plain_name(f)
                                                       for f in weight_map.values()):
            facts.shard_errors.append("model.safetensors.index.json: weight_map: expected an object of "
                                      "tensor name → shard file name in this folder, got "
                                      f"{_show(weight_map)}")
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


MERGE_REPORT, MERGE_MANIFEST = "merge_report.json", "envdoctor-merge.json"


def merge_record(system: System, d: str, files: list[str]) -> str | None:
    """For a folder written by train/merge.py: "verified" when envdoctor merge recorded that verify.py passed
    it (envdoctor-merge.json, shards at their recorded sizes), else what is missing. None: not a merge."""
    if MERGE_REPORT not in files and MERGE_MANIFEST not in files and not d.endswith(".unverified"):
        return None
    text = system.read_text(f"{d}/{MERGE_MANIFEST}")
    if text is None:
        return (f"merged (merge_report.json) but never verified against base + adapter: no {MERGE_MANIFEST}"
                + (" (the folder's name says so: a merge stopped during verification or failed it)"
                   if d.endswith(".unverified") else ""))
    try:
        manifest = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return f"{MERGE_MANIFEST} is not valid JSON ({exc})"
    if not isinstance(manifest, dict) or manifest.get("verified") is not True:
        return f"{MERGE_MANIFEST} does not record a passed verification (verified: true)"
    recorded = manifest.get("files")
    if not isinstance(recorded, dict) or not recorded:
        return f"{MERGE_MANIFEST}: files: expected the verified shards and their sizes"
    for name, size in recorded.items():
        head = system.read_head(f"{d}/{name}", 0) if isinstance(name, str) and _plain_name(name) else None
        if head is None or head[1] != size:
            now = "missing" if head is None else f"{head[1]} bytes, verified {size}"
            return f"{name}: not the file that was verified ({now})"
    return "verified"


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
            config = json.loads(text)
        except (ValueError, RecursionError) as exc:
            facts.config_error = f"config.json is not valid JSON ({exc})"
        else:
            if not isinstance(config, dict):
                facts.config_error = f"config.json: expected a JSON object, got {type(config).__name__}"
            else:
                facts.config = config
                dtype = config.get("dtype") or config.get("torch_dtype")
                facts.dtype = dtype if isinstance(dtype, str) else None
                if dtype is not None and not isinstance(dtype, str):
                    facts.config_error = ("config.json: torch_dtype: expected a string like 'bfloat16', "
                                          f"got {dtype!r:.40}")
                if not isinstance(config.get("architectures", []), list):
                    facts.config_error = "config.json: architectures: expected a list of class names, got " \
                                         f"{config['architectures']!r:.40}"
    _shards(system, d, files, facts)
    facts.merge_record = merge_record(system, d, files)
    facts.adapter_files = [f for f in files if f in ADAPTER_FILES]
    facts.tokenizer_files = [f for f in files if f in TOKENIZER_FILES]
    facts.generation_config = "generation_config.json" in files
    tok_cfg = system.read_text(f"{d}/tokenizer_config.json") or ""
    facts.chat_template = any(f.startswith("chat_template") for f in files) or '"chat_template"' in tok_cfg
    if facts.config is not None:
        res = system.run(target.argv(ctx.python, "modelload", SMOKE_MARK, d), timeout=ctx.probe_timeout * 4,
                         env={**system.env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        try:
            facts.load = json.loads(res.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            facts.load_error = ("timed out" if res.timed_out else res.describe()) + \
                (f": {res.stderr.strip().splitlines()[-1]}" if res.stderr.strip() else "")
    return facts
