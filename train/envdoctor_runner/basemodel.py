"""Where the base model's files are, and which of those the run needs are missing — read from the
file system, before transformers or the hub client get a chance to fail with a chain of tracebacks.
Standard library only: the runner uses it in the target interpreter, and envdoctor's preflight loads
this same file by path (envdoctor never imports huggingface_hub).

base_model is a folder when it exists relative to the config's folder or is written as a path
(/…, ./…, ../…, ~…, or more than one "/"); otherwise a Hugging Face id, looked up in the hub's cache
the way huggingface_hub lays it out: <cache>/models--org--name/refs/main → snapshots/<commit>/.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
VOCAB = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"), ("vocab.txt",))
HUB_HINT = ("`hf` comes with huggingface_hub in the target environment (pip install -U huggingface_hub); "
            "huggingface-cli is gone since huggingface_hub 1.0")


@dataclass
class BaseModel:
    name: str
    kind: str                      # "folder" | "cache" | "not cached" | "no folder"
    path: Path | None = None       # the folder transformers will read
    looked: list[str] = field(default_factory=list)


def needs(cfg: dict) -> tuple[bool, bool]:
    """`cfg`: a resolved config (every key present). (weights, tokenizer) the run reads from base_model: a model_config builds the model from the
    config; tokenizer: train-bpe learns the tokenizer from the corpus."""
    return not isinstance(cfg["model_config"], dict), cfg["tokenizer"] != "train-bpe"


def hub_cache(env) -> Path:
    """huggingface_hub's order: HF_HUB_CACHE, HF_HOME/hub, XDG_CACHE_HOME/huggingface/hub, ~/.cache/…"""
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    cache = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path(env.get("HOME", "~")) / ".cache"
    return cache.expanduser() / "huggingface" / "hub"


def offline(env) -> bool:
    return str(env.get("HF_HUB_OFFLINE", "")).strip().upper() in ("1", "ON", "YES", "TRUE")


def is_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or name.count("/") > 1 or "\\" in name


def locate(name: str, config_dir: str | Path, env) -> BaseModel:
    local = Path(name).expanduser()
    local = local if local.is_absolute() else (Path(config_dir) / local).resolve()
    if local.is_dir():
        return BaseModel(name, "folder", local, [str(local)])
    if is_path(name):
        return BaseModel(name, "no folder", None, [str(local)])
    repo = hub_cache(env) / f"models--{name.replace('/', '--')}"
    snapshots = repo / "snapshots"
    looked = [str(snapshots)]
    try:  # refs/main holds the commit an offline from_pretrained(name) reads
        commit = (repo / "refs" / "main").read_text().strip()
        if (snapshots / commit).is_dir():
            return BaseModel(name, "cache", snapshots / commit, looked)
    except OSError:
        pass
    found = sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime) if snapshots.is_dir() else []
    found = [p for p in found if p.is_dir()]
    return BaseModel(name, "cache", found[-1], looked) if found else BaseModel(name, "not cached", None, looked)


def missing_files(folder: Path, weights: bool, tokenizer: bool) -> list[str]:
    """What transformers would need from `folder` and cannot find (a cache symlink to a deleted or
    never-finished blob counts as missing)."""
    have = {p.name for p in folder.iterdir() if p.exists()} if folder.is_dir() else set()
    out = []
    if weights:
        if "config.json" not in have:
            out.append("config.json (the model's architecture)")
        present = [w for w in WEIGHTS if w in have]
        if not present:
            out.append("weights: none of " + ", ".join(WEIGHTS))
        for index in (w for w in present if w.endswith(".index.json")):
            try:
                shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                out.append(f"{index}: unreadable or without a weight_map")
                continue
            gone = [s for s in shards if s not in have]
            if gone:
                out.append(f"{len(gone)} of the {len(shards)} shards {index} lists: {', '.join(gone[:4])}"
                           + (" …" if len(gone) > 4 else "") + " (an interrupted download?)")
    if tokenizer:
        if not any(all(f in have for f in group) for group in VOCAB):
            out.append("tokenizer: none of tokenizer.json, tokenizer.model, vocab.json + merges.txt, vocab.txt")
        if "tokenizer_config.json" not in have:
            out.append("tokenizer_config.json (it names the special tokens, eos and pad, that the runner needs)")
    return out


def problems(cfg: dict, config_dir: str | Path, env=None,
             will_download: bool | None = None) -> tuple[BaseModel | None, list[str]]:
    """(where the base model is, errors). `will_download`: the run may fetch from the hub (default:
    unless HF_HUB_OFFLINE is set in `env`)."""
    env = os.environ if env is None else env
    weights, tokenizer = needs(cfg)
    name = cfg["base_model"]
    if not (weights or tokenizer) or not isinstance(name, str):
        return None, []
    where = locate(name, config_dir, env)
    if where.kind == "no folder":
        return where, [f"base_model: {where.looked[0]}: no such folder (a relative base_model is relative to the "
                       f"config's folder {config_dir}; a Hugging Face id is written org/name)"]
    if where.kind == "not cached":
        if will_download if will_download is not None else not offline(env):
            return where, []
        return where, [f"base_model: {name} is not in the local Hugging Face cache (looked in {where.looked[0]}) "
                       f"and runs are offline. Download it first: hf download {name}  — a gated model (e.g. "
                       f"meta-llama/…) needs its licence accepted on https://huggingface.co/{name} and "
                       f"`hf auth login` before that; or let the run download it: envdoctor train CONFIG "
                       f"--download. {HUB_HINT}"]
    gone = missing_files(where.path, weights, tokenizer)
    if not gone:
        return where, []
    fix = f"hf download {name} (again: it completes what is missing)" if where.kind == "cache" else \
        "copy them from the model's source folder or its Hugging Face repository"
    return where, [f"base_model: {where.path} lacks " + "; ".join(gone) + f". {fix}"]
