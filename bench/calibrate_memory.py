#!/usr/bin/env python3
"""Measure the peak GPU memory of QLoRA training steps on a random-weight model of a given shape,
for a grid of (sequence length, micro batch, modules_to_save, gradient checkpointing), next to the
estimator's prediction. Needs a CUDA GPU, torch, transformers, peft, bitsandbytes.

    PYTHONPATH=src python bench/calibrate_memory.py --out calib.json [--shape llama-3.1-8b]

The 4-bit base is built once with the runner's own code (train/envdoctor_runner/modeling.py); each grid point wraps
it in fresh LoRA adapters (--engine peft: the plain loop; runner: envdoctor's runner), runs a warm-up
optimizer step and --steps - 1 timed ones (--accum micro batches each), and reads
torch.cuda.max_memory_allocated() over all of them.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "train"))
from envdoctor.training.config import resolve  # noqa: E402  (the docstring: PYTHONPATH=src)

SHAPES = {"llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                               num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                               max_position_embeddings=8192)}
GRID = [  # (seq, micro batch, modules_to_save, gradient checkpointing, role)
    (1024, 1, False, True, "fit"), (2048, 2, False, True, "fit"), (1024, 1, False, False, "fit"),
    (1024, 2, True, True, "fit"),
    (2048, 2, True, True, "check"), (4096, 1, False, True, "check"), (512, 2, False, False, "check"),
    (512, 4, True, True, "check"), (2048, 1, True, True, "check"),
]
BASE = resolve(dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, lora_r=64, lora_alpha=128,
            lora_dropout=0.05, lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                    "down_proj"], optimizer="paged_adamw_8bit", learning_rate=1e-4,
                    bf16=True))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shape", default="llama-3.1-8b")
    ap.add_argument("--points", help="only these points, e.g. 2048x2,1024x2m,512x2n: seq x micro batch, m = with "
                                     "modules_to_save, n = no gradient checkpointing")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--engine", choices=("peft", "runner"), default="peft",
                    help="peft: the plain loop (prepare_model_for_kbit_training, model(labels=...)); runner: "
                         "envdoctor's runner (bf16 frozen base, fp32 trainables, chunked cross-entropy)")
    ap.add_argument("--accum", type=int, default=1, help="micro batches per optimizer step")
    ap.add_argument("--role", default=None, help="role recorded for --points (default: the engine)")
    args = ap.parse_args()
    grid = GRID
    if args.points:
        grid = [(int(p.split("x")[0]), int(p.split("x")[1].rstrip("mn")), "m" in p.split("x")[1],
                 "n" not in p.split("x")[1], args.role or args.engine) for p in args.points.split(",")]
    import bitsandbytes as bnb
    import torch
    from envdoctor_runner.loss import CausalLMLoss
    from envdoctor_runner.modeling import attach_lora, quantize_linears
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import LlamaConfig, LlamaForCausalLM

    from envdoctor.training.estimate import Shape, estimate

    shape_cfg = SHAPES[args.shape]
    t0 = time.time()
    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig(**shape_cfg)).to(torch.bfloat16)
    quantize_linears(model, BASE, torch.bfloat16, "cuda")
    if args.engine == "peft":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    torch.cuda.empty_cache()
    print(f"built the 4-bit base in {time.time() - t0:.0f} s; "
          f"{torch.cuda.memory_allocated() / 2**30:.2f} GiB allocated", flush=True)
    shape = Shape.from_config(shape_cfg)
    rows = []
    for seq, micro, mts, gc_on, role in grid:
        cfg = dict(BASE, sequence_len=seq, micro_batch_size=micro, gradient_checkpointing=gc_on,
                   lora_modules_to_save=["embed_tokens", "lm_head"] if mts else [])
        if args.engine == "runner":
            peft_model = attach_lora(model, cfg, torch.bfloat16)
            loss_of = CausalLMLoss(peft_model)
        else:
            if gc_on:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
            else:
                model.gradient_checkpointing_disable()
            peft_model = get_peft_model(model, LoraConfig(r=64, lora_alpha=128, lora_dropout=0.05,
                                                          target_modules=BASE["lora_target_modules"],
                                                          modules_to_save=cfg["lora_modules_to_save"] or None,
                                                          task_type="CAUSAL_LM"))
        opt = bnb.optim.PagedAdamW8bit([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        ids = torch.randint(0, shape.vocab, (micro, seq), device="cuda")

        def step():
            for _ in range(args.accum):
                loss = (loss_of(ids, None, ids) if args.engine == "runner"
                        else peft_model(input_ids=ids, labels=ids).loss)
                (loss / args.accum).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        loss = step()  # warm-up (kernels, allocator, paged optimizer state), not timed
        torch.cuda.synchronize()
        start = time.time()
        for _ in range(args.steps - 1):
            loss = step()
        torch.cuda.synchronize()
        took = (time.time() - start) / max(args.steps - 1, 1) / args.accum
        peak = torch.cuda.max_memory_allocated()
        est = estimate(shape, cfg, engine=args.engine)
        row = dict(engine=args.engine, seq=seq, micro=micro, modules_to_save=mts, gradient_checkpointing=gc_on, role=role,
                   measured_gib=peak / 2**30, estimated_gib=est.peak / 2**30, step_s=took,
                   tokens_per_s=micro * seq / took, parts={k: v / 2**30 for k, v in est.parts.items()})
        rows.append(row)
        print(json.dumps(row), flush=True)
        del opt, loss
        model = peft_model.unload()
        del peft_model
        gc.collect()
        torch.cuda.empty_cache()
    Path(args.out).write_text(json.dumps({"shape": args.shape, "gpu": torch.cuda.get_device_name(), "rows": rows},
                                         indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
