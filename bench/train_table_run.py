#!/usr/bin/env python3
"""Issue 17's training table, measured: the plain loop (written the way the PEFT / bitsandbytes docs show),
the same + Liger kernels, and envdoctor's runner, on config A (random-weight Llama-3.1-8B shape, seq 2048,
micro batch 2, accumulation 4, LoRA r=64 on all seven projections, paged 8-bit AdamW, gradient
checkpointing) and config B (A + modules_to_save: [embed_tokens, lm_head], the seed's
train/configs/qlora_style_transfer.yaml).

    python bench/train_table_run.py --out results.jsonl [--runs plain:A,runner:A,...] [--steps 50]
    python bench/train_table_run.py --device cpu --shape tiny --out /tmp/t.jsonl     (the CPU proof)

The random model is built and saved once (bench/hf_loop.save_random_model) and every (engine, config) runs
in its own subprocess that reads it back: Liger patches transformers' Llama classes process-wide, and a
process of its own leaves nothing of one run (paged optimizer state, bitsandbytes' global overrides, the
caching allocator's reserve) under the next one's peaks. Each run appends one JSON line to --out; at the
end the table is printed (bench/train_table.py, which also merges the lines of several calls).

Every run trains on the same token batches: step k's micro batch j is drawn from a generator seeded with
(seed, k, j), from a Zipf-shaped distribution over the vocabulary (a fixed permutation of it), so the loss
has something to learn and falls — uniform tokens would sit at ln(vocab) whatever the adapters do, and the
loss comparison would prove nothing. Packing is off (one document per row, no mask needed); the same seed
is set before the adapters are built and before the first step (LoRA init, dropout).

Speed: tokens/s over steps 2..N (the first step's kernels and optimizer state count for memory only).
Memory: torch's peak allocated and peak reserved over all steps, from a reset after the adapters are built
(the quantized base is in both); bitsandbytes' paged optimizer state lies outside torch's allocator and is
reported as paged_bytes. With --budget-s each run gets a share of what is left of the budget and stops
stepping before its share runs out, so a call never passes the device's limit; the line then says how many
steps it ran.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CONFIGS = {"A": [], "B": ["embed_tokens", "lm_head"]}
ENGINES = ("plain", "liger", "runner")
# Per shape: (sequence_len, micro_batch_size, gradient_accumulation_steps, seconds to load the 4-bit base,
# seconds per plain-loop step): the estimates only divide a --budget-s among the runs.
SETUPS = {"llama-3.1-8b": (2048, 2, 4, 45.0, 6.5), "tiny": (64, 2, 2, 8.0, 0.05)}
SPEED = {"plain": 1.0, "liger": 0.95, "runner": 0.6}  # a step's cost relative to the plain loop's (a guess)


def batches(seed: int, schedule: list[int], micro: int, seq: int, vocab: int):
    """[step][micro] LongTensor (micro, seq), schedule[k] micro batches at step k: the same for every engine."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    rank = torch.arange(vocab, dtype=torch.float64)
    probs = 1.0 / (rank + 2.0) ** 1.1
    perm = torch.randperm(vocab, generator=gen)
    out = []
    for k, accum in enumerate(schedule):
        row = []
        for j in range(accum):
            g = torch.Generator().manual_seed(seed * 1_000_003 + k * 1009 + j)
            row.append(perm[torch.multinomial(probs, micro * seq, replacement=True, generator=g)].view(micro, seq))
        out.append(row)
    return out


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "liger_kernel", "triton"):
        try:
            from importlib.metadata import version
            out[name] = version(name.replace("_", "-"))
        except Exception:  # noqa: BLE001 - not installed
            pass
    return out


def machine(device: str) -> str:
    if device.startswith("cuda"):
        import torch
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"


def run_one(args) -> dict:
    """One (engine, config) in this process: build, train, measure; the record for the JSON line."""
    engine, config = args.child.split(":")
    seq, micro, accum = args.seq, args.micro, args.accum
    # The timed steps at the config's accumulation, then the loss-only steps at --loss-accum (all steps' losses
    # are compared: the same schedule and batches for every engine).
    schedule = [accum] * args.steps + [args.loss_accum] * args.loss_steps
    rec = dict(engine=engine, config=config, steps_requested=len(schedule), date=dt.date.today().isoformat(),
               setup=dict(shape=args.shape, seq=seq, micro_batch=micro, accum=accum, lora_r=64,
                          optimizer="paged_adamw_8bit", checkpointing=True, seed=args.seed,
                          schedule=f"{args.steps} timed steps at accum {accum}"
                          + (f" + {args.loss_steps} loss steps at accum {args.loss_accum}" if args.loss_steps else "")),
               versions=versions(), notes=[])
    if engine == "liger":
        if not args.device.startswith("cuda"):
            rec["skipped"] = "Liger's kernels are Triton: CUDA only, not run on this device"
            return rec
        import hf_loop
        why = hf_loop.apply_liger()  # before the model is built: the classes are patched, not the instances
        if why:
            rec["skipped"] = why
            return rec
    if engine == "runner" and args.device.startswith("cuda"):  # as train/qlora.py does, before torch loads
        sys.path.insert(0, str(HERE.parent / "train"))
        from envdoctor_runner import allocator
        allocator.configure()
    rec["allocator"] = os.environ.get("PYTORCH_ALLOC_CONF") or os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or "default"
    import torch

    import hf_loop
    rec["machine"] = machine(args.device)
    cfg = hf_loop.base_config(sequence_len=seq, micro_batch_size=micro, gradient_accumulation_steps=accum,
                              lora_modules_to_save=list(CONFIGS[config]))
    vocab = hf_loop.SHAPES[args.shape]["vocab_size"]
    data = batches(args.seed, schedule, micro, seq, vocab)
    start = time.perf_counter()
    base = hf_loop.load_base(Path(args.model_dir), "runner" if engine == "runner" else "hf", cfg, args.device)
    hf_loop.warm_up(base, args.device, vocab)
    rec["load_s"] = round(time.perf_counter() - start, 1)
    torch.manual_seed(args.seed)
    t = hf_loop.build_peft_model(base, cfg, "runner" if engine == "runner" else "hf-loop")
    rec["trainable_params"] = sum(p.numel() for p in t.params)
    rec["checkpointing"] = hf_loop.checkpointing_on(t.model)
    hf_loop._reset(args.device)
    if engine == "runner":  # the runner's own choice of optimizer class and arguments
        from envdoctor_runner.modeling import build_optimizer
        opt = build_optimizer(cfg, t.model, args.device, t.notes)
    else:
        opt = hf_loop.make_optimizer(t.params, cfg, args.device, t.notes)
    rec["optimizer"] = type(opt).__name__
    torch.manual_seed(args.seed)
    t.model.train()
    losses, seconds = [], []
    for k, n in enumerate(schedule):
        begin = time.perf_counter()
        total = None
        for ids in data[k]:
            ids = ids.to(args.device, non_blocking=True)
            loss = t.loss(ids)
            (loss / n).backward()
            total = loss.detach() if total is None else total + loss.detach()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(total) / n)  # waits for the device
        seconds.append(time.perf_counter() - begin)
        if args.stop_at and k + 1 < len(schedule) and time.time() + 1.2 * seconds[-1] > args.stop_at:
            rec["stopped"] = "its share of --budget-s ran out"
            break
    rec.update(hf_loop._memory(args.device, opt))
    timed = seconds[1:args.steps]
    rec.update(steps=len(losses), losses=[round(x, 6) for x in losses], step_seconds=[round(x, 4) for x in seconds],
               timed_steps=len(timed),
               tokens_per_s=micro * seq * accum * len(timed) / sum(timed) if timed else None)
    rec["notes"] = list(t.notes)
    return rec


def child_main(args) -> int:
    try:
        rec = run_one(args)
    except Exception as exc:  # noqa: BLE001 - the row says what broke, the other runs go on
        import traceback
        traceback.print_exc()
        engine, config = args.child.split(":")
        msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        rec = dict(engine=engine, config=config, error=msg, date=dt.date.today().isoformat())
    with open(args.out, "a") as fh:
        fh.write(json.dumps(rec) + "\n")
    return 0


def parse_runs(text: str) -> list[tuple[str, str]]:
    runs = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        engine, _, config = item.partition(":")
        if engine not in ENGINES or config not in CONFIGS:
            raise SystemExit(f"--runs: {item!r} is not ENGINE:CONFIG with ENGINE in {ENGINES}, CONFIG in "
                             f"{tuple(CONFIGS)}")
        runs.append((engine, config))
    return runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shape", choices=sorted(SETUPS), default="llama-3.1-8b")
    ap.add_argument("--model-dir", default=None, help="the saved random model (built there if absent; default "
                                                      "/tmp/envdoctor-random-<shape>)")
    ap.add_argument("--out", required=True, help="JSON lines are appended here")
    ap.add_argument("--runs", default="plain:A,runner:A,liger:A,plain:B,runner:B,liger:B")
    ap.add_argument("--steps", type=int, default=50, help="optimizer steps at the config's accumulation (timed "
                                                           "from the second on)")
    ap.add_argument("--loss-steps", type=int, default=0, help="more steps after those, at --loss-accum, for the "
                                                              "loss comparison only (not for the Liger runs)")
    ap.add_argument("--loss-accum", type=int, default=None, help="accumulation of the loss steps (default: the "
                                                                 "config's)")
    ap.add_argument("--liger-steps", type=int, default=None, help="timed steps of the Liger runs (default --steps; "
                                                                   "a few are enough for speed)")
    ap.add_argument("--budget-s", type=float, default=None, help="seconds for all the runs of this call")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seq", type=int)
    ap.add_argument("--micro", type=int)
    ap.add_argument("--accum", type=int)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--stop-at", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    seq, micro, accum, load_s, step_s = SETUPS[args.shape]
    args.seq, args.micro, args.accum = args.seq or seq, args.micro or micro, args.accum or accum
    args.loss_accum = args.loss_accum or args.accum
    args.model_dir = args.model_dir or f"/tmp/envdoctor-random-{args.shape}"
    if args.child:
        return child_main(args)

    import hf_loop
    started = time.time()
    if not (Path(args.model_dir) / "config.json").exists():
        t0 = time.perf_counter()
        hf_loop.save_random_model(args.shape, Path(args.model_dir), args.device)
        print(f"random {args.shape} saved to {args.model_dir} in {time.perf_counter() - t0:.0f} s", flush=True)
    runs = parse_runs(args.runs)
    steps_of = {r: (args.liger_steps or args.steps) if r[0] == "liger" else args.steps for r in runs}
    loss_of = {r: 0 if r[0] == "liger" else args.loss_steps for r in runs}
    cost = {r: load_s + (steps_of[r] + loss_of[r] * args.loss_accum / args.accum) * step_s * SPEED[r[0]]
            for r in runs}
    for i, (engine, config) in enumerate(runs):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", f"{engine}:{config}", "--device", args.device,
               "--shape", args.shape, "--model-dir", args.model_dir, "--out", args.out, "--seed", str(args.seed),
               "--steps", str(steps_of[(engine, config)]), "--loss-steps", str(loss_of[(engine, config)]),
               "--loss-accum", str(args.loss_accum), "--seq", str(args.seq), "--micro", str(args.micro),
               "--accum", str(args.accum)]
        timeout = None
        if args.budget_s:
            left = args.budget_s - (time.time() - started)
            share = left * cost[(engine, config)] / sum(cost[r] for r in runs[i:])
            cmd += ["--stop-at", str(time.time() + share)]
            timeout = max(share, 0) + 90  # a hung load must not eat the next runs' time
        print(f"== {engine}:{config} ({steps_of[(engine, config)]} + {loss_of[(engine, config)]} steps)", flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, timeout=timeout)
            failed = f"exit status {proc.returncode}" if proc.returncode else None
        except subprocess.TimeoutExpired:
            failed = f"killed after {timeout:.0f} s (its share of --budget-s plus 90 s)"
        if failed:  # the child wrote nothing (killed, out of memory in the loader, ...)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(dict(engine=engine, config=config, error=failed)) + "\n")
        print(f"   {engine}:{config} took {time.perf_counter() - t0:.0f} s", flush=True)
    import train_table
    print()
    print(train_table.render(train_table.load_lines([args.out])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
