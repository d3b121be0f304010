#!/usr/bin/env python3
"""QLoRA fine-tuning recipe: NF4 base (where bitsandbytes can), LoRA adapters, per-epoch checkpoints.

    python train/qlora.py --config OUTPUT_DIR/config.resolved.json [--resume] [--dry-run]
    torchrun --nproc-per-node N train/qlora.py --config …      (data parallel, one process per GPU)

`envdoctor train CONFIG` writes the resolved config after its preflight and runs this in the target
environment. The script is meant to be read and changed: the loop is below, the pieces in envdoctor_runner/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from envdoctor_runner import allocator, stopping  # noqa: E402  (standard library only)

if __name__ == "__main__":  # before the imports below (torch's takes seconds): a stop during them is clean too
    allocator.configure()  # before torch is imported: it reads the allocator setting once
    stopping.install()
    stopping.die_with_launcher()
try:
    if __name__ == "__main__":
        stopping.release()
    from envdoctor_runner import atomic, basemodel, checkpoint, config, corpus, data, report, schedule  # noqa: E402
except BaseException:  # a KeyboardInterrupt, or the ImportError it can leave behind in numpy's import
    if __name__ != "__main__" or stopping.received() is None:
        raise
    raise SystemExit(stopping.before_start(sys.argv))
if __name__ == "__main__":
    stopping.last_words = lambda signum: interrupted(sys.argv, signum)  # a main thread stuck in C++

# The run could not write its output (a full disk, a quota, a file-size limit): one line names the folder, the
# bytes, the last good checkpoint and the command that continues; every rank ends with this code.
WRITE_FAILED = 4


class Stopped(Exception):
    """Every rank agreed to stop (a write failed on one of them); `code` is the exit status."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def guarded_main() -> int:
    """main(), where a write that failed ends as one line and WRITE_FAILED on every rank, not a traceback."""
    try:
        return main()
    except Stopped as stop:  # the one line is said; every rank ends with the same code
        return stop.code
    except (atomic.WriteFailed, OSError) as exc:  # a write outside the guarded ones: still one line
        if isinstance(exc, OSError) and atomic.write_errno(exc) not in atomic.SPACE:
            raise
        failed = exc if isinstance(exc, atomic.WriteFailed) else atomic.WriteFailed(Path(exc.filename or "."), exc)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {failed.line()}. Free space there, or pass --output-dir on another disk", flush=True)
        return WRITE_FAILED


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="prepare the data, print the plan, train nothing")
    args = ap.parse_args()
    cfg = config.load(args.config)  # every key filled by envdoctor: the runner has no defaults of its own
    out = Path(cfg["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    from envdoctor_runner import runlog
    log = runlog.start(out)  # first: torch's and transformers' warnings and logging go through it
    notes: list[str] = []

    import torch
    from envdoctor_runner import distributed
    from envdoctor_runner.loss import CausalLMLoss
    from envdoctor_runner.modeling import build_model, build_optimizer, build_tokenizer, dtypes
    from envdoctor_runner.progress import Progress
    world = distributed.init()  # torchrun / accelerate launch set RANK and WORLD_SIZE; alone: one process
    device = distributed.device(world)
    say = print if world.main else (lambda *a, **k: None)
    problem = distributed.shared_output_problem(out, world)  # several nodes: one output folder for all
    if problem:
        say(f"error: {problem}", flush=True)
        distributed.finish(world)
        return 2
    torch.manual_seed(cfg["seed"])

    def refuse(lines: list[str]) -> int:  # bad input: say what and where, exit 2 before the model loads
        say("\n".join(lines), flush=True)
        distributed.finish(world)
        return 2

    try:
        docs = data.read_documents([d["path"] for d in cfg["datasets"]], Path(cfg["config_dir"]),
                                   warn=lambda w: say(f"warning: {w}", flush=True))
    except corpus.CorpusError as exc:
        return refuse(["error: the datasets cannot be used:"] + [f"  {p}" for p in exc.problems])
    where, problems = basemodel.problems(cfg, cfg["config_dir"])
    if problems:
        return refuse([f"error: {p}" for p in problems])
    if where is not None and where.kind == "folder":
        cfg["base_model"] = str(where.path)  # relative to the config, not to wherever the runner was started
    try:
        tokenizer = build_tokenizer(cfg, docs)
    except (OSError, ValueError) as exc:  # the hub client's (gated, not found) and tokenizer files' errors
        return refuse([f"error: cannot load the tokenizer of {cfg['base_model']}: "
                       + str(exc).strip().splitlines()[0]])
    seq = cfg["sequence_len"]
    train, val, stats = data.prepare(docs, tokenizer, seq, cfg["chunk_overlap"], cfg["val_set_size"], cfg["seed"],
                                     packing=cfg["sample_packing"])
    del docs  # the tokens hold the corpus from here (4 bytes a token); the text is not needed again
    micro, accum = cfg["micro_batch_size"], cfg["gradient_accumulation_steps"]
    need = corpus.needed_chunks(micro, accum)
    if stats["train"] < need:  # exact (tokenized): the preflight can only rule out the certain cases
        return refuse([f"error: the datasets make {stats['chunks']} chunk(s) of ≤{seq} tokens from "
                       f"{stats['documents']} document(s): {stats['train']} to train on and {stats['val']} for "
                       f"validation; one optimizer step needs {need} (micro_batch_size {micro} × "
                       f"gradient_accumulation_steps {accum}). Add text, or lower "
                       "micro_batch_size / gradient_accumulation_steps / sequence_len / val_set_size"])
    # Data parallel: one process's optimizer steps (accum micro batches each, the last maybe fewer), each
    # step's micro batches dealt over the ranks (envdoctor_runner/schedule.py): every rank runs as many
    # steps and passes as the others, whatever the data size, and the updates are one process's.
    if not distributed.same_data([train, val], world):
        say("error: the ranks prepared different data (a dataset or tokenizer that differs between nodes?): "
            "every node needs the same dataset files at the same paths", flush=True)
        distributed.finish(world)
        return 2
    n_micro = math.ceil(len(train) / micro)
    steps_per_epoch = len(schedule.steps(n_micro, accum))
    say(f"data: {stats['documents']} documents → {stats['chunks']} chunks of ≤{seq} tokens "
        f"({stats['duplicates']} duplicates dropped): {stats['train']} train, {stats['val']} val; "
        f"{steps_per_epoch} optimizer steps per epoch (micro batch {micro} × accumulation {accum}"
        + (f", {world.size} processes" if world.distributed else "") + ")", flush=True)
    if steps_per_epoch < 10:
        say(f"warning: only {steps_per_epoch} optimizer steps per epoch: the learning-rate schedule and the "
            "per-epoch checkpoints will be coarse; add text or lower gradient_accumulation_steps", flush=True)
    if args.dry_run:
        distributed.finish(world)
        return 0

    fsdp = bool(cfg["fsdp"])
    loading: dict = {}  # the weight bytes this process held at most while the model was built
    failed = None
    try:
        model = build_model(cfg, tokenizer, device, notes, base_dir=out / "base" if world.main else None,
                            fsdp=fsdp, shard=distributed.sharder(world, device) if fsdp else None, loading=loading)
    except atomic.WriteFailed as exc:  # the float base (rank 0): the model itself was built to the end
        failed = exc
    stop_if_failed(failed, world, lambda e: f"{e.line('the float base ' + str(out / 'base'))}. Free space "
                   f"there, or pass --output-dir on another disk, and run the same command again", say)
    state = {"epoch": 0, "batch": 0, "step": 0, "losses": [], "val": []}
    last = checkpoint.latest(out) if args.resume else None
    if last:
        # every process loads the same file; under FSDP after wrapping (the model may be sharded already)
        state = checkpoint.read_state(last) if fsdp else checkpoint.restore_weights(last, model)
        # Positions are global micro-batch counts (any --nproc resumes), except in mid-epoch checkpoints that
        # an earlier runner wrote with several processes: per process, and that runner's layout is gone.
        if state["batch"] and state.get("world_size", 1) > 1 and state.get("batch_scope") != "global":
            say(f"error: {last.name} was written mid-epoch by an earlier runner with {state.get('world_size', 1)} "
                "processes (a per-process data position); resume from an epoch checkpoint instead", flush=True)
            distributed.finish(world)
            return 2
    if world.main:  # a resumed run, or a fresh one after an interrupted attempt: each step logged once
        try:
            checkpoint.trim_metrics(out, state["step"])
        except (OSError, UnicodeError) as exc:  # like any metrics write: a warning, the run goes on (and no
            # rank is left alone in the next collective); the log may then repeat the steps after the checkpoint
            say(f"warning: could not trim {out / 'metrics.jsonl'} to step {state['step']} "
                f"({exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}): its rows after that "
                "step may appear twice", flush=True)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()  # the peak we report is training's, not model construction's
    dtype, _ = dtypes(cfg, device, [])  # the same answer build_model had (its notes are said already)
    step_loss = distributed.wrap(CausalLMLoss(model, cfg["loss_chunk_tokens"], dtype), world, device, fsdp)
    optimizer = build_optimizer(cfg, model, device, notes)  # after wrapping: FSDP replaces the parameters
    epochs = cfg["num_epochs"]
    total = steps_per_epoch * epochs
    warmup = cfg["warmup_steps"] if cfg["warmup_steps"] is not None else int(total * (cfg["warmup_ratio"] or 0))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg["lr_scheduler"], warmup, total))
    if last:
        if fsdp:
            checkpoint.restore_weights(last, model, step_loss)
        checkpoint.restore_training(last, optimizer, scheduler, step_loss if fsdp else None)
        say(f"resumed from {last.name}: epoch {state['epoch'] + 1}, batch {state['batch']}", flush=True)
    for n in notes:
        say(f"note: {n}", flush=True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    say(f"model: {trainable:,} trainable parameters on {device}"
        + (f", sharded over {world.size} process(es) (FSDP)" if fsdp else ""), flush=True)

    def save(name: str, extra: dict) -> None:
        failed = None
        try:
            if fsdp:  # gathering a sharded adapter is a collective: every rank calls, rank 0 writes
                checkpoint.save(out, name, model, optimizer, scheduler, {**state, **extra}, step_loss, world.main)
            elif world.main:
                checkpoint.save(out, name, model, optimizer, scheduler, {**state, **extra})
        except atomic.WriteFailed as exc:  # nothing half-written left, the previous checkpoint untouched
            failed = exc
        # in place of a barrier: one all-reduce tells every rank whether rank 0 could write
        stop_if_failed(failed, world, lambda e: checkpoint_failed(e, name, cfg), say)

    save_every = cfg["save_steps"]  # optimizer steps between mid-epoch checkpoints (None: per epoch)
    started, tokens, all_tokens = time.time(), 0, 0.0
    progress = Progress(total, state["step"], epochs=epochs) if world.main else None
    pad = tokenizer.pad_token_id
    watchdog = distributed.Watchdog(world)
    for epoch in range(state["epoch"], epochs):
        step_loss.train()
        batches = data.batches(train, micro, pad, epoch, cfg["seed"])  # every rank: the same order, made lazily
        plan = schedule.epoch_plan(len(batches), accum, world.rank, world.size)
        # state["batch"]: micro batches of this epoch already trained, counted globally (world-size free).
        for s in range(state["batch"] // accum if epoch == state["epoch"] else 0, len(plan)):
            watchdog.at(f"epoch {epoch + 1}, optimizer step {state['step'] + 1}")
            loss_sum, count = 0.0, 0
            for i, p in enumerate(plan[s]):
                stopping.check()
                ids, mask = (torch.tensor(x, device=device) for x in batches[p.index])
                with distributed.gradient_sync(step_loss, world, i + 1 == len(plan[s])):
                    loss = step_loss(ids, mask, ids.masked_fill(mask == 0, -100))
                    (loss * p.weight).backward()  # weight: world / micro batches in this step; 0 for a dummy
                if p.real:
                    tokens += int(mask.sum())
                    loss_sum, count = loss_sum + float(loss.detach()), count + 1
            lr = scheduler.get_last_lr()[0]  # the rate this step trained at (step() moves to the next)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            loss_sum, count, all_tokens = distributed.totals([loss_sum, count, tokens], world)
            mean_loss = loss_sum / count  # the mean of this step's micro-batch losses, as one process logs it
            state["losses"].append(round(mean_loss, 5))
            state.setdefault("lrs", []).append(lr)
            elapsed = max(time.time() - started, 1e-6)
            rate = all_tokens / elapsed
            if world.main:
                progress.update(state["step"], epoch + 1, mean_loss, rate)
                report.log_metrics(out, {"step": state["step"], "epoch": epoch + 1, "loss": mean_loss,
                                         "lr": lr, "tokens_per_s": rate,
                                         "tokens": int(all_tokens), "elapsed_s": round(elapsed, 3)})
            if save_every and state["step"] % save_every == 0 and s + 1 < len(plan):
                watchdog.at(f"checkpoint step-{state['step']}")
                save(f"step-{state['step']}", {"epoch": epoch, "batch": (s + 1) * accum, "batch_scope": "global",
                                               "world_size": world.size, "written_by_rank": world.rank})
        state["batch"] = 0
        if val:  # val_set_size 0 (axolotl's default): no validation, nothing logged as NaN
            watchdog.at(f"validation after epoch {epoch + 1}")
            vloss = evaluate(step_loss, val, micro, pad, device, world)
            state["val"].append([state["step"], vloss])
            if world.main:
                progress.message(f"epoch {epoch + 1}: validation loss {vloss:.4f}")
                report.log_metrics(out, {"step": state["step"], "epoch": epoch + 1, "val_loss": vloss})
        watchdog.at(f"checkpoint epoch-{epoch + 1}")
        save(f"epoch-{epoch + 1}", {"epoch": epoch + 1, "world_size": world.size, "written_by_rank": world.rank})
    watchdog.idle()
    rate = distributed.total(tokens, world) / max(time.time() - started, 1e-6)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    memory = distributed.peak_memory_per_rank(world, device)  # a collective: every rank
    if loading:  # a 4-bit model built from a config: exact counts, unlike RSS (a collective too)
        held = distributed.totals([float(loading["peak_loaded_weight_bytes"]) if r == world.rank else 0.0
                                   for r in range(world.size)], world)
        memory["peak_loaded_weight_bytes_per_rank"] = [int(b) for b in held]
        memory["loaded_weight_bytes"] = {k.removesuffix("_weight_bytes"): v for k, v in loading.items()
                                         if k != "peak_loaded_weight_bytes"}
    weights = checkpoint.gathered_weights(step_loss if fsdp else None)  # FSDP: every rank takes part
    failed, plot = None, None
    if world.main:
        try:
            plot = write_results(out, cfg, model, weights, tokenizer, val, train, seq, state, stats, notes, device,
                                 world, rate, peak, memory)
        except atomic.WriteFailed as exc:
            failed = exc
    stop_if_failed(failed, world, lambda e: f"{e.line()}. Training finished and its last checkpoint is kept: free "
                   f"space there, then `{resume_command(cfg)}` writes the results (no step is trained again)", say)
    if world.main:
        progress.close()
        log.done(out / "adapter", plot, sys.executable)
    distributed.finish(world)
    log.close()
    return 0


def write_results(out: Path, cfg: dict, model, weights, tokenizer, val, train, seq: int, state: dict, stats: dict,
                  notes: list[str], device: str, world, rate: float, peak, memory: dict) -> Path:
    """The run's results (rank 0): the adapter folder and every file staged and renamed into place, so a
    full disk leaves none half-written; run_summary.json (what merge and eval read) last. A failed write
    raises atomic.WriteFailed."""
    trained = weights if weights is not None else {n: p for n, p in model.named_parameters() if p.requires_grad}
    with atomic.staged(out / "adapter", atomic.size_of(trained)) as tmp:
        checkpoint.write_adapter(tmp, model, weights)
        tokenizer.save_pretrained(tmp)
    # Held-out token chunks (never trained on) for `envdoctor merge` to verify and `envdoctor eval` to score.
    # Without a validation split (val_set_size 0) the merge is verified on training chunks: it checks
    # that merged == base + adapter, which any tokens show; eval says where its chunks came from.
    held = (val or train)[:16].tolist()
    atomic.write_text(out / "heldout.json", json.dumps({"chunks": held, "sequence_len": seq,
                                                        "source": "validation" if val else "training"}))
    try:
        plot = report.loss_curve_png(out, state["losses"], [tuple(v) for v in state["val"]], state.get("lrs"))
    except Exception as exc:  # noqa: BLE001 - a write error becomes WriteFailed; anything else is a bug
        if atomic.write_errno(exc) is None:
            raise
        raise atomic.WriteFailed(out / "loss_curve.png", exc) from exc
    base = str(out / "base") if (out / "base" / "config.json").exists() else cfg["base_model"]
    atomic.write_text(out / "run_summary.json", json.dumps({
        "base_model": cfg["base_model"], "base_model_path": base, "model_config": cfg["model_config"],
        "config": cfg, "versions": report.versions(), "device": device, "world_size": world.size,
        "notes": notes, "data": stats, "steps": state["step"],
        "first_loss": state["losses"][0] if state["losses"] else None,
        "final_loss": state["losses"][-1] if state["losses"] else None, "val_loss": state["val"],
        "heldout": "heldout.json", "adapter": str(out / "adapter"), "tokens_per_s": rate,
        "peak_memory_gib": peak, **memory, "python": sys.executable}, indent=2))
    return plot


def resume_command(cfg: dict) -> str:
    """The command that continues this run: envdoctor's own when it launched the run (its --nproc,
    --python… kept), else the config and the output folder (it may have come from --output-dir)."""
    return os.environ.get("ENVDOCTOR_RESUME_COMMAND") or (
        f"envdoctor train {shlex.quote(cfg['config_path'])} --output-dir {shlex.quote(str(cfg['output_dir']))} --resume")


def checkpoint_failed(exc: atomic.WriteFailed, name: str, cfg: dict) -> str:
    """The one line for a checkpoint that could not be written: what, why, the sizes, where to continue."""
    last = checkpoint.latest(Path(cfg["output_dir"]))
    where = exc.line(f"checkpoint {name} in {exc.target.parent}")
    if last is None:
        return (f"{where}. No checkpoint was written yet: free space there, or pass --output-dir on another "
                "disk, and start again")
    return f"{where}. The last good checkpoint is {last.name}: free space there, then continue with: {resume_command(cfg)}"


def stop_if_failed(failed: atomic.WriteFailed | None, world, message, say) -> None:
    """Every rank calls this at the same point: one all-reduce of "a write failed here" (nothing when
    alone), so that when rank 0 could not write, no rank is left waiting in a collective. Then rank 0 says
    message(failed) in one line and every rank raises Stopped(WRITE_FAILED)."""
    from envdoctor_runner import distributed
    if not distributed.totals([1.0 if failed is not None else 0.0], world)[0]:
        return
    if failed is not None:
        say(f"error: {message(failed)}", flush=True)
    distributed.finish(world)
    raise Stopped(WRITE_FAILED)


def lr_factor(kind: str, warmup: int, total: int):
    """The learning-rate factor per optimizer step: linear warm-up, then cosine / linear decay or constant."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        done = min(step - warmup, total) / max(total - warmup, 1)
        return {"cosine": 0.5 * (1 + math.cos(math.pi * done)), "linear": 1.0 - done, "constant": 1.0}[kind]
    return factor


def evaluate(loss_of, chunks, micro, pad, device, world) -> float:
    """Mean validation loss (over batches, as one process computes it) of the (wrapped) loss module. The
    batches are dealt over the ranks like one optimizer step's: every rank runs as many forwards (FSDP's
    gathers stay in step), dummies are not counted, and one all-reduce sums (loss, batches)."""
    import torch
    from envdoctor_runner import distributed
    if not chunks:
        return float("nan")
    loss_of.eval()
    batches = data.batches(chunks, micro, pad, 0, 0)
    total, n = 0.0, 0
    with torch.no_grad():
        for p in schedule.passes(list(range(len(batches))), world.rank, world.size):
            stopping.check()
            ids, mask = (torch.tensor(x, device=device) for x in batches[p.index])
            loss = float(loss_of(ids, mask, ids.masked_fill(mask == 0, -100)))
            if p.real:
                total, n = total + loss, n + 1
    loss_of.train()
    total, n = distributed.totals([total, n], world)
    return total / n


def interrupted(argv: list[str], signum: int) -> int:
    """What a stopped run says (rank 0; each node's first rank when there are several: its own command):
    where it can continue from, and the command that does."""
    atomic.remove_unfinished()  # every rank: no half-written folder stays (the stop thread's os._exit unwinds nothing)
    if stopping.speaks():
        try:
            cfg = config.load(argv[argv.index("--config") + 1])
            last, command = checkpoint.latest(Path(cfg["output_dir"])), resume_command(cfg)
        except (SystemExit, ValueError, IndexError, OSError):
            last, command = None, None
        stopping.tell(stopping.message(command, last, signum))
    return stopping.exit_code(signum)


if __name__ == "__main__":
    code = stopping.run(guarded_main)
    if code is None:
        code = interrupted(sys.argv, stopping.received() or signal.SIGINT)
    if "torch.distributed" in sys.modules:  # a process group's threads end with the process (distributed.leave)
        from envdoctor_runner import distributed
        distributed.leave(code)
    raise SystemExit(code)
