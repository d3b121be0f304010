"""Facts for the datasets and the base model a training config names: read from disk by the runner's
own standard-library modules (train/envdoctor_runner/corpus.py, basemodel.py), so that the preflight
and the run agree; nothing here imports torch, transformers or huggingface_hub."""

from __future__ import annotations

from dataclasses import dataclass, field

from envdoctor.context import Context
from envdoctor.facts.train_config import TrainConfigFacts
from envdoctor.system import System
from envdoctor.training.runner_modules import runner_module


@dataclass
class DatasetFacts:
    entries: list[str] | None              # None: `datasets` is not a list of {path: …} (config.valid says so)
    files: list[str] = field(default_factory=list)
    documents: int = 0
    text_bytes: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    max_train_chunks: int | None = None    # an upper bound, without a tokenizer (None: config keys unusable)
    needed_chunks: int | None = None
    sequence_len: int | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class BaseModelFacts:
    name: object
    needs_weights: bool
    needs_tokenizer: bool
    kind: str | None = None                # folder | cache | not cached | no folder (None: nothing to read)
    path: str | None = None
    problems: list[str] = field(default_factory=list)
    download: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _int(v) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def probe_datasets(system: System, ctx: Context, train_config: TrainConfigFacts) -> DatasetFacts:
    corpus = runner_module("corpus")
    cfg, config_dir = train_config.config.resolved(), train_config.config.path.parent  # defaults filled
    raw = cfg["datasets"]
    ok = isinstance(raw, list) and all(isinstance(d, dict) and isinstance(d.get("path"), str) for d in raw)
    facts = DatasetFacts([d["path"] for d in raw] if ok else None)
    if facts.entries is None:
        return facts
    found = corpus.read_corpus(facts.entries, config_dir)
    facts.files, facts.documents = [str(f) for f in found.files], len(found.documents)
    facts.text_bytes, facts.problems, facts.warnings = sum(found.doc_bytes), found.problems, found.warnings
    seq, micro = _int(cfg["sequence_len"]), _int(cfg["micro_batch_size"])
    accum = _int(cfg["gradient_accumulation_steps"])
    overlap, val = cfg["chunk_overlap"], cfg["val_set_size"]
    if seq and micro and accum and isinstance(overlap, int) and isinstance(val, (int, float)) and not found.problems:
        facts.sequence_len = seq
        facts.needed_chunks = corpus.needed_chunks(micro, accum)  # one process: the fewest a step can need
        facts.max_train_chunks = corpus.max_train_chunks(found.doc_bytes, seq, overlap, val,
                                                         cfg["sample_packing"] is True)
    return facts


def probe_base_model(system: System, ctx: Context, train_config: TrainConfigFacts) -> BaseModelFacts:
    basemodel = runner_module("basemodel")
    cfg = train_config.config.resolved()
    weights, tokenizer = basemodel.needs(cfg)
    facts = BaseModelFacts(cfg["base_model"], weights, tokenizer, download=ctx.train_download)
    where, facts.problems = basemodel.problems(cfg, train_config.config.path.parent, system.env,
                                               will_download=ctx.train_download)
    if where is not None:
        facts.kind, facts.path = where.kind, str(where.path) if where.path else where.looked[0]
    return facts
