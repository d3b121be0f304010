"""Helpers of bench/h200x2_fsdp4.sh (FSDP over a 4-bit base on two GPUs): write the corpus and configs,
run the preflight's memory check against an emulated small card, and report.

    python bench/fsdp4_bench.py prep R [--tiny]      corpus + configs under R (--tiny: CPU-sized shapes)
    python bench/fsdp4_bench.py preflight R CARD_GIB  the config.memory check of `envdoctor train`, with the
                                                      GPUs' free memory replaced by CARD_GIB (an emulated card)
    python bench/fsdp4_bench.py report R              JSON: losses, agreement, per-GPU peaks, tokens/s
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
from pathlib import Path

import yaml

# (a) a shape that fits one card, sharded vs unsharded: a lost quantisation state shows as different losses
FITS = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 8, "num_attention_heads": 16,
        "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 4096}
# (b) Llama-3-70B's width with few layers: its weights (12 layers ≈ 4.9 GiB of NF4, embedding and lm_head
# 2 × 1.96 GiB in bf16) exceed one emulated 9 GiB card with training's needs (the preflight's estimate:
# ≈ 9.5 GiB), and fit sharded over two (≈ 4.4 GiB each, plus one gathered layer and lm_head)
WIDE = {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 12, "num_attention_heads": 64,
        "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192, "rope_theta": 500000.0}
WIDE["num_hidden_layers"] = int(os.environ.get("WIDE_LAYERS", WIDE["num_hidden_layers"]))  # a larger card: more layers
TINY_FITS = {"hidden_size": 128, "intermediate_size": 344, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 512}
TINY_WIDE = dict(TINY_FITS, hidden_size=256, intermediate_size=688, num_hidden_layers=3, num_attention_heads=8)


def prep(root: Path, tiny: bool) -> None:
    root.mkdir(parents=True, exist_ok=True)
    # A small vocabulary of made-up words: a random base learns its unigram statistics within a few steps,
    # so "the loss falls" is visible in ten.
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 7))) for _ in range(300)]
    with open(root / "corpus.jsonl", "w") as fh:
        for _ in range(22):  # each about 0.7 × sequence_len tokens: one chunk each, 20 to train = 10 steps
            fh.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(350 if not tiny else 40)) + "."}) + "\n")
    seq = 64 if tiny else 512
    base = {"base_model": "random-from-config", "tokenizer": "train-bpe",
            "datasets": [{"path": str(root / "corpus.jsonl")}], "sequence_len": seq, "val_set_size": 2, "seed": 3,
            "load_in_4bit": True, "adapter": "qlora", "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
            "bnb_4bit_compute_dtype": "bfloat16", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
            "lora_target_linear": True, "learning_rate": 2e-3, "num_epochs": 1, "micro_batch_size": 1,
            "gradient_accumulation_steps": 2, "optimizer": "adamw_torch", "gradient_checkpointing": True,
            "bf16": "auto", "warmup_steps": 0, "lr_scheduler": "constant", "loss_chunk_tokens": 256}
    for name, shape in (("fits", TINY_FITS if tiny else FITS), ("wide", TINY_WIDE if tiny else WIDE)):
        for n in (1, 2):
            cfg = dict(base, model_config=shape, output_dir=str(root / f"{name}{n}"))
            (root / f"{name}{n}.yaml").write_text(yaml.safe_dump(cfg))


def preflight(root: Path, card_gib: float) -> None:
    """`envdoctor train`'s config.memory check on the wide shape, every GPU's free memory set to one
    emulated card. The check estimates one process's peak today; with the estimator's per-GPU (sharded)
    figure wired in, the same call with fsdp and 2 processes is the one that passes."""
    from envdoctor.checks.train_config import memory
    from envdoctor.facts.gpu import Gpu, GpuFacts
    from envdoctor.facts.train_config import TrainConfigFacts
    from envdoctor.training import config as train_config
    card = int(card_gib * 2**30)
    gpu = GpuFacts(source="emulated", gpus=[Gpu(0, f"emulated {card_gib:g} GiB card", (9, 0), card, card, 0)])
    out = {}
    for label, extra in (("one card, no fsdp", {}), ("fsdp", {"fsdp": True})):
        cfg = train_config.load_data(root / "wide1.yaml", {**yaml.safe_load((root / "wide1.yaml").read_text()), **extra})
        facts = TrainConfigFacts(cfg, model=cfg.data["model_config"], model_from="model_config in the config")
        res = memory(facts, gpu)
        res = dataclasses.asdict(res) if dataclasses.is_dataclass(res) else vars(res)
        out[label] = {"status": str(res.get("status")), "message": res.get("message"), "details": res.get("details"),
                      "remedy": (res.get("remedy") or {}).get("text")}
    try:  # the estimator's per-GPU figure, where it already takes the number of processes
        from envdoctor.training.estimate import Shape, estimate
        e = estimate(Shape.from_config(cfg.data["model_config"]), dict(cfg.resolved(), fsdp=True), nproc=2)
        out["estimate fsdp nproc 2 (GiB)"] = round(e.peak / 2**30, 2)
    except TypeError as exc:
        out["estimate fsdp nproc 2"] = f"not available in this estimator ({exc})"
    print(json.dumps(out, indent=1, default=str))


def report(root: Path) -> None:
    res = {}
    for name in ("fits1", "fits2", "wide2"):
        run = root / name
        try:
            rows = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
            summary = json.loads((run / "run_summary.json").read_text())
        except OSError as exc:
            res[name] = f"no result ({exc.strerror}: {exc.filename})"
            continue
        steady = rows[1:] if len(rows) > 2 else rows
        span = steady[-1]["elapsed_s"] - steady[0]["elapsed_s"] if len(steady) > 1 else 0
        res[name] = {"world_size": summary["world_size"], "losses": [round(r["loss"], 5) for r in rows],
                     "steady_tokens_per_s": round((steady[-1]["tokens"] - steady[0]["tokens"]) / span) if span else None,
                     "tokens_per_s_whole_run": round(summary["tokens_per_s"]),
                     "notes": summary["notes"]}
        for key in ("peak_gpu_allocated_gib_per_rank", "peak_gpu_reserved_gib_per_rank", "peak_host_rss_gib_per_rank"):
            res[name][key] = summary.get(key)
    one, two = (res.get(n) for n in ("fits1", "fits2"))
    if isinstance(one, dict) and isinstance(two, dict) and len(one["losses"]) == len(two["losses"]):
        res["fits_loss_max_rel_diff_sharded_vs_unsharded"] = float(
            f"{max(abs(a - b) / abs(a) for a, b in zip(one['losses'], two['losses'])):.2e}")
    wide = res.get("wide2")
    if isinstance(wide, dict):
        res["wide_loss_falls"] = wide["losses"][-1] < wide["losses"][0]
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    what, root = sys.argv[1], Path(sys.argv[2])
    if what == "prep":
        prep(root, "--tiny" in sys.argv)
    elif what == "preflight":
        preflight(root, float(sys.argv[3]))
    else:
        report(root)
