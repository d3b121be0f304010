"""Facts for `envdoctor check --config FILE`: the training config and the base model's shape, from
the config itself (model_config), a local model folder, the Hugging Face cache, or envdoctor's table."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from envdoctor import tables
from envdoctor.context import Context
from envdoctor.facts.host import hf_cache_dir
from envdoctor.system import System
from envdoctor.training.config import TrainConfig, load, load_data
from envdoctor.training.allocator import ALLOC_VARS  # torch's allocator variables, in the order it reads them


@dataclass
class TrainConfigFacts:
    config: TrainConfig
    model: dict | None = None          # config.json fields
    model_from: str | None = None
    looked: list[str] = field(default_factory=list)
    engine: str = "runner"             # whose memory: envdoctor's runner, or "peft" (axolotl, a plain loop)
    nproc: int | None = None           # --nproc, when given
    visible_devices: str | None = None  # CUDA_VISIBLE_DEVICES of the environment the run starts from
    alloc_env: dict[str, str] = field(default_factory=dict)  # torch's allocator variables set there

    def to_dict(self) -> dict:
        return {"path": str(self.config.path), "errors": self.config.errors, "warnings": self.config.warnings,
                "model_from": self.model_from, "model": self.model, "engine": self.engine, "nproc": self.nproc,
                "visible_devices": self.visible_devices, "alloc_env": self.alloc_env}


def probe_train_config(system: System, ctx: Context) -> TrainConfigFacts:
    cfg = load(ctx.train_config)
    if ctx.train_overrides and not cfg.errors:  # what `envdoctor train --fsdp/--output-dir` will run
        cfg = load_data(ctx.train_config, {**cfg.data, **dict(ctx.train_overrides)})
    facts = TrainConfigFacts(cfg, engine=ctx.train_engine, nproc=ctx.train_nproc,
                             visible_devices=system.env.get("CUDA_VISIBLE_DEVICES"),
                             alloc_env={k: system.env[k] for k in ALLOC_VARS if k in system.env})
    data = cfg.data
    if isinstance(data.get("model_config"), dict):
        facts.model, facts.model_from = data["model_config"], "model_config in the config"
        return facts
    base = data.get("base_model")
    if not isinstance(base, str):
        return facts
    candidates = [f"{base}/config.json"]
    cache = hf_cache_dir(system.env)
    snap = f"{cache}/models--{base.replace('/', '--')}/snapshots"
    candidates += [f"{snap}/{d}/config.json" for d in system.listdir(snap)]
    for c in candidates:
        facts.looked.append(c)
        text = system.read_text(c)
        if text:
            try:
                model = json.loads(text)
            except (ValueError, RecursionError):
                continue
            if isinstance(model, dict):  # a config.json that is a list or a number is no model's shape
                facts.model, facts.model_from = model, c
                return facts
    known = tables.load("models").get(base)
    if known:
        facts.model, facts.model_from = known, "envdoctor's table of known shapes"
    return facts
