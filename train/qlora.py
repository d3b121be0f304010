#!/usr/bin/env python3
"""QLoRA fine-tuning recipe: NF4 base (where bitsandbytes can), LoRA adapters, per-epoch checkpoints.

    python train/qlora.py --config OUTPUT_DIR/config.resolved.json [--resume] [--dry-run]

`envdoctor train CONFIG` writes the resolved config after its preflight and runs this in the target
environment. The script is meant to be read and changed: the loop is below, the pieces in lib/.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib import checkpoint, data, report  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="prepare the data, print the plan, train nothing")
    args = ap.parse_args()
    cfg = json.loads(Path(args.config).read_text())
    out = Path(cfg["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []

    import torch
    from lib.modeling import build_model, build_optimizer, build_tokenizer
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(cfg.get("seed", 0))

    docs = data.read_documents([d["path"] for d in cfg["datasets"]], Path(cfg["config_dir"]))
    tokenizer = build_tokenizer(cfg, docs)
    seq = cfg["sequence_len"]
    train, val, stats = data.prepare(docs, tokenizer, seq, cfg.get("chunk_overlap", seq // 8),
                                     cfg.get("val_set_size", 0.1), cfg.get("seed", 0))
    micro, accum = cfg["micro_batch_size"], cfg.get("gradient_accumulation_steps", 1)
    steps_per_epoch = math.ceil(math.ceil(len(train) / micro) / accum)
    print(f"data: {stats['documents']} documents → {stats['chunks']} chunks of ≤{seq} tokens "
          f"({stats['duplicates']} duplicates dropped): {stats['train']} train, {stats['val']} val; "
          f"{steps_per_epoch} optimizer steps per epoch (micro batch {micro} × accumulation {accum})", flush=True)
    if steps_per_epoch < 10:
        print(f"warning: only {steps_per_epoch} optimizer steps per epoch: the learning-rate schedule and the "
              "per-epoch checkpoints will be coarse; add text or lower gradient_accumulation_steps", flush=True)
    if args.dry_run:
        return 0

    model = build_model(cfg, tokenizer, device, notes)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()  # the peak we report is training's, not model construction's
    optimizer = build_optimizer(cfg, model, device, notes)
    epochs = cfg["num_epochs"]
    total = steps_per_epoch * epochs
    warmup = cfg.get("warmup_steps", max(1, int(total * cfg.get("warmup_ratio", 0.05))))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    for n in notes:
        print(f"note: {n}", flush=True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"model: {trainable:,} trainable parameters on {device}", flush=True)

    state = {"epoch": 0, "batch": 0, "step": 0, "losses": [], "val": []}
    if args.resume and (last := checkpoint.latest(out)):
        state = checkpoint.restore(last, model, optimizer, scheduler)
        print(f"resumed from {last.name}: epoch {state['epoch'] + 1}, batch {state['batch']}", flush=True)

    save_every = cfg.get("save_steps")  # optimizer steps between mid-epoch checkpoints (None: per epoch)
    started, tokens = time.time(), 0
    pad = tokenizer.pad_token_id
    for epoch in range(state["epoch"], epochs):
        model.train()
        batches = list(data.batches(train, micro, pad, epoch, cfg.get("seed", 0)))
        for b in range(state["batch"] if epoch == state["epoch"] else 0, len(batches)):
            ids, mask = (torch.tensor(x, device=device) for x in batches[b])
            labels = ids.masked_fill(mask == 0, -100)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            (loss / accum).backward()
            tokens += int(mask.sum())
            if (b + 1) % accum == 0 or b + 1 == len(batches):
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
                state["losses"].append(round(float(loss.detach()), 5))
                rate = tokens / max(time.time() - started, 1e-6)
                eta = (total - state["step"]) * (time.time() - started) / max(state["step"], 1)
                print(f"step {state['step']}/{total} epoch {epoch + 1} loss {float(loss.detach()):.4f} "
                      f"{rate:,.0f} tok/s eta {eta:,.0f}s", flush=True)
                report.log_metrics(out, {"step": state["step"], "epoch": epoch + 1, "loss": float(loss.detach()),
                                         "lr": scheduler.get_last_lr()[0], "tokens_per_s": rate})
                if save_every and state["step"] % save_every == 0 and b + 1 < len(batches):
                    checkpoint.save(out, f"step-{state['step']}", model, optimizer, scheduler,
                                    {**state, "epoch": epoch, "batch": b + 1})
        state["batch"] = 0
        vloss = evaluate(model, val, micro, pad, device)
        state["val"].append([state["step"], vloss])
        print(f"epoch {epoch + 1}: validation loss {vloss:.4f}", flush=True)
        report.log_metrics(out, {"step": state["step"], "epoch": epoch + 1, "val_loss": vloss})
        checkpoint.save(out, f"epoch-{epoch + 1}", model, optimizer, scheduler, {**state, "epoch": epoch + 1})
    model.save_pretrained(out / "adapter")
    tokenizer.save_pretrained(out / "adapter")
    report.loss_curve_png(out, state["losses"], [tuple(v) for v in state["val"]])
    (out / "run_summary.json").write_text(json.dumps({
        "base_model": cfg.get("base_model"), "model_config": cfg.get("model_config"), "config": cfg,
        "versions": report.versions(), "device": device, "notes": notes, "data": stats,
        "steps": state["step"], "first_loss": state["losses"][0] if state["losses"] else None,
        "final_loss": state["losses"][-1] if state["losses"] else None, "val_loss": state["val"],
        "adapter": str(out / "adapter"), "tokens_per_s": tokens / max(time.time() - started, 1e-6),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}, indent=2))
    print(f"done: adapter in {out / 'adapter'}, summary in {out / 'run_summary.json'}", flush=True)
    return 0


def evaluate(model, chunks, micro, pad, device) -> float:
    import torch
    if not chunks:
        return float("nan")
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for ids, mask in data.batches(chunks, micro, pad, 0, 0):
            ids, mask = torch.tensor(ids, device=device), torch.tensor(mask, device=device)
            total += float(model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss)
            n += 1
    model.train()
    return total / n


if __name__ == "__main__":
    raise SystemExit(main())
