#!/usr/bin/env python3
"""Measure peak GPU memory (allocated and reserved) of QLoRA training over a grid of shapes and settings,
for each engine of bench/hf_loop.py, next to the estimator's prediction: the data bench/fit_memory.py
fits envdoctor's constants on.

    PYTHONPATH=src python bench/calibrate_memory.py --out $OUT/calibration.jsonl --budget-s 540 \
        [--shapes llama-3.1-8b,...] [--engines hf-loop,hf-trainer,runner] [--roles fit,holdout] [--liger]
    PYTHONPATH=src python bench/calibrate_memory.py --device cpu --shapes tiny --out /tmp/c.jsonl  (the code
        paths on a CPU; measures nothing)

One JSON line per point, written as it is measured (a killed run keeps what it had), after a first
"header" line (device, versions). Points are ordered by shape, then engine family (hf-loop and
hf-trainer share one prepared base; the runner has its own), so each base is built once. --budget-s
stops before a point (or a base) that would not finish in time, from the durations seen so far.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hf_loop  # noqa: E402  (bench/hf_loop.py, beside this file)

MTS = ["embed_tokens", "lm_head"]
# (seq, micro batch, r, modules_to_save, gradient checkpointing, role). Fit points span the terms the
# constants multiply (tokens, seq², r, modules_to_save, no checkpointing); hold-out points are other
# combinations over seq 256–8192, micro batch 1–8, r 8–128, all of which fit on an H200 for every engine.
GRID = {
    "llama-3.1-8b": [
        (512, 1, 64, False, True, "fit"), (2048, 1, 64, False, True, "fit"), (2048, 2, 64, False, True, "fit"),
        (4096, 2, 64, False, True, "fit"), (1024, 2, 64, True, True, "fit"), (4096, 1, 64, True, True, "fit"),
        (1024, 1, 64, False, False, "fit"), (512, 2, 64, True, False, "fit"), (2048, 1, 16, False, True, "fit"),
        (2048, 1, 128, False, True, "fit"),
        (2048, 2, 64, True, True, "holdout"),   # the seed's config
        (256, 8, 64, False, True, "holdout"), (8192, 1, 64, False, True, "holdout"),
        (4096, 4, 32, False, True, "holdout"), (1024, 4, 8, True, True, "holdout"),
        (512, 4, 128, False, True, "holdout"), (512, 1, 64, True, False, "holdout"),
        (1024, 2, 64, False, False, "holdout"), (8192, 2, 64, True, True, "holdout"),
    ],
    "llama-3.2-3b": [
        (2048, 2, 64, False, True, "fit"), (1024, 4, 64, True, True, "fit"), (1024, 1, 32, False, False, "fit"),
        (4096, 4, 16, False, True, "holdout"), (1024, 1, 128, True, False, "holdout"),
        (512, 8, 64, False, True, "holdout"),
    ],
    "llama-3.2-1b": [
        (2048, 4, 64, False, True, "fit"), (1024, 2, 64, True, True, "fit"), (512, 4, 16, False, False, "fit"),
        (4096, 8, 32, False, True, "holdout"), (256, 2, 8, True, False, "holdout"),
        (8192, 2, 128, True, True, "holdout"),
    ],
    "tiny": [
        (256, 2, 8, False, True, "fit"), (128, 1, 16, True, True, "fit"), (128, 2, 8, False, False, "holdout"),
        (256, 1, 16, True, False, "holdout"),
    ],
    "tiny-tied": [(256, 2, 8, True, True, "fit"), (128, 1, 16, True, False, "holdout")],
}
# Guesses for the first measurement of their kind, seconds (then the largest seen is used): building a
# base per GB of bf16 weights (init + save + quantized load), and a point per token of a step.
BUILD_S_PER_GB = 5.0
POINT_S_PER_KTOKEN = 1.2


def points(shapes: list[str], engines: list[str], roles: list[str]) -> list[dict]:
    """The grid in the order it is measured: by shape, then engine family (one base each); within a family
    fit and hold-out points alternate and each point is measured by every engine of the family before the
    next, so a run cut short by its budget still has both roles and both engines."""
    out = []
    for shape in shapes:
        fits = [g for g in GRID[shape] if g[-1] == "fit" and "fit" in roles]
        held = [g for g in GRID[shape] if g[-1] == "holdout" and "holdout" in roles]
        order = [g for pair in zip(fits, held) for g in pair] + fits[len(held):] + held[len(fits):]
        for family in ("hf", "runner"):
            members = [e for e in engines if (e == "runner") == (family == "runner")]
            for seq, micro, r, mts, gc_on, role in order:
                for engine in members:
                    out.append(dict(shape=shape, family=family, engine=engine, seq=seq, micro=micro, r=r,
                                    modules_to_save=mts, gradient_checkpointing=gc_on, role=role))
    return out


def point_config(p: dict) -> dict:
    return hf_loop.base_config(sequence_len=p["seq"], micro_batch_size=p["micro"], lora_r=p["r"],
                               lora_alpha=2 * p["r"], gradient_checkpointing=p["gradient_checkpointing"],
                               lora_modules_to_save=list(MTS) if p["modules_to_save"] else [])


def predict(shape: str, cfg: dict, engine: str) -> dict:
    """The estimator's numbers for this point (envdoctor on PYTHONPATH), or why not."""
    try:
        from envdoctor.training import estimate as E
        e = E.estimate(E.Shape.from_config(hf_loop.SHAPES[shape]), cfg, engine=engine)
        return dict(estimated_allocated=e.peak, estimated_reserved=getattr(e, "reserved", None),
                    parts={k: round(v) for k, v in e.parts.items()})
    except Exception as exc:  # noqa: BLE001 - a prediction is a bonus: the measurement is what counts
        return dict(estimate_error=f"{type(exc).__name__}: {exc}")


def header(device: str, liger: bool) -> dict:
    import importlib.metadata as md
    import torch
    versions = {}
    for dist in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "liger-kernel"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    out = dict(kind="header", device=device, versions=versions, liger=liger, time=time.strftime("%Y-%m-%dT%H:%M:%S"))
    if device.startswith("cuda"):
        torch.cuda.init()
        torch.zeros(1, device=device)
        free, total = torch.cuda.mem_get_info()
        # With only a one-element tensor: the CUDA context (and the allocator's first 2 MiB segment).
        out.update(gpu=torch.cuda.get_device_name(), total_bytes=total, context_bytes=total - free
                   - torch.cuda.memory_reserved(), pytorch_cuda_alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "calibration.jsonl"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shapes", default="llama-3.1-8b,llama-3.2-3b,llama-3.2-1b")
    ap.add_argument("--engines", default=",".join(hf_loop.ENGINES))
    ap.add_argument("--roles", default="fit,holdout")
    ap.add_argument("--steps", type=int, default=2, help="optimizer steps per point (the first is the warm-up)")
    ap.add_argument("--budget-s", type=float, default=540.0, help="stop cleanly before this many seconds")
    ap.add_argument("--model-dir", default="/tmp/envdoctor-random-models",
                    help="random models are saved here once per shape, and reused")
    ap.add_argument("--liger", action="store_true", help="Liger kernels in transformers' Llama (hf engines)")
    ap.add_argument("--reentrant", action="store_true", help="reentrant checkpointing in the hf engines")
    args = ap.parse_args()
    started = time.monotonic()
    shapes, engines = args.shapes.split(","), args.engines.split(",")
    for name, known in (("shape", hf_loop.SHAPES), ("engine", hf_loop.ENGINES)):
        bad = [x for x in (shapes if name == "shape" else engines) if x not in known]
        if bad:
            ap.error(f"unknown {name}(s) {bad}; known: {sorted(known)}")
    if args.liger and (why := hf_loop.apply_liger()):
        ap.error(why)
    import torch
    todo = points(shapes, engines, args.roles.split(","))
    out = open(args.out, "a", buffering=1)
    out.write(json.dumps(header(args.device, args.liger)) + "\n")
    build_rate, point_rate = BUILD_S_PER_GB, POINT_S_PER_KTOKEN
    base, built = None, None
    done = 0

    def left() -> float:
        return args.budget_s - (time.monotonic() - started)

    for p in todo:
        shape_cfg = hf_loop.SHAPES[p["shape"]]
        need = point_rate * p["seq"] * p["micro"] / 1000
        if built != (p["shape"], p["family"]):
            from envdoctor.training.estimate import Shape  # noqa: F401 - fail early without PYTHONPATH=src
            gb = _bf16_gb(shape_cfg)
            if left() < build_rate * gb + need:
                print(f"budget: {left():.0f} s left, not enough to build {p['shape']} for {p['family']}", flush=True)
                break
            base = None
            hf_loop._reset(args.device)
            t0 = time.monotonic()
            folder = hf_loop.save_random_model(p["shape"], Path(args.model_dir) / p["shape"], args.device)
            base = hf_loop.load_base(folder, p["family"], point_config(p), args.device, args.reentrant)
            build_rate = max(build_rate if built else 0.0, (time.monotonic() - t0) / gb)
            built = (p["shape"], p["family"])
            out.write(json.dumps(dict(kind="build", shape=p["shape"], family=p["family"],
                                      seconds=round(time.monotonic() - t0, 1),
                                      allocated=torch.cuda.memory_allocated() if args.device.startswith("cuda")
                                      else 0)) + "\n")
        if left() < need:
            print(f"budget: {left():.0f} s left, stopping before {p}", flush=True)
            break
        cfg = point_config(p)
        t0 = time.monotonic()
        row = dict(kind="point", **p, liger=args.liger, reentrant=args.reentrant and p["family"] == "hf")
        t = None
        try:
            t = hf_loop.build_peft_model(base, cfg, p["engine"], args.reentrant)
            run = hf_loop.run_trainer if p["engine"] == "hf-trainer" else hf_loop.run_steps
            row.update(run(t, cfg, args.steps, args.device, shape_cfg["vocab_size"]))
            base = hf_loop.release(t, p["engine"])
        except Exception as exc:  # noqa: BLE001 - one failing point (out of memory too) must not lose the others
            row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            if not isinstance(exc, torch.OutOfMemoryError):
                traceback.print_exc()
            base, built = _recover(t, base, built, args.device)
        row.update(predict(p["shape"], cfg, p["engine"]))
        row["seconds"] = round(time.monotonic() - t0, 2)
        point_rate = max(point_rate if done else 0.0, row["seconds"] / (p["seq"] * p["micro"] / 1000))
        out.write(json.dumps(row) + "\n")
        print(json.dumps({k: row.get(k) for k in ("shape", "engine", "seq", "micro", "r", "modules_to_save",
                                                  "gradient_checkpointing", "role", "peak_allocated",
                                                  "peak_reserved", "estimated_allocated", "seconds", "error")}),
              flush=True)
        done += 1
    out.write(json.dumps(dict(kind="end", points=done, of=len(todo), seconds=round(time.monotonic() - started, 1)))
              + "\n")
    print(f"{done} of {len(todo)} points in {time.monotonic() - started:.0f} s → {args.out}", flush=True)
    return 0


def _bf16_gb(c: dict) -> float:
    h, i, n, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    kv = c["num_key_value_heads"] * c.get("head_dim", h // c["num_attention_heads"])
    q = c["num_attention_heads"] * c.get("head_dim", h // c["num_attention_heads"])
    params = n * (2 * h * q + 2 * h * kv + 3 * h * i) + v * h * (1 if c.get("tie_word_embeddings") else 2)
    return max(params * 2 / 1e9, 0.1)


def _recover(t, base, built, device: str):
    """After a failed point: (base, built) — the base without the point's adapters, or (None, None) when
    they cannot be taken off (the next point builds the base again)."""
    try:
        if t is None or t.model is None:
            raise RuntimeError("adapters half attached")
        base = hf_loop.release(t, t.engine)
    except Exception:  # noqa: BLE001 - start from a fresh base then
        base, built = None, None
    hf_loop._reset(device)
    return base, built


if __name__ == "__main__":
    raise SystemExit(main())
