"""`envdoctor train`: validate the config, run the checks that matter for training and refuse on
failures (unless --force), then run the bundled runner in the target environment — through torchrun
when more than one GPU is visible (or with --nproc) — or hand the config to `axolotl train`."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

from envdoctor import engine, registry
from envdoctor.assets import asset
from envdoctor.context import Context
from envdoctor.errors import UsageError
from envdoctor.model import Status, failing_statuses
from envdoctor.system import Stopped, System
from envdoctor.training.backends import axolotl_argv, axolotl_env, axolotl_missing, cpu_tolerated_extensions
from envdoctor.training.config import load, load_data
from envdoctor.training.diskspace import space_problem, steps_per_epoch
from envdoctor.training.runner_modules import absolute_inputs

# What a run needs. The GPU checks skip on a CPU machine (the demo), the rest must pass.
PREFLIGHT = ("python.interpreter", "python.version", "gpu.driver", "gpu.torch", "gpu.driver_cuda", "gpu.arch",
             "gpu.bf16", "packages.requirements", "binaries.extensions", "config.memory", "config.datasets",
             "config.base_model", "config.axolotl_device")
RUNTIME = ("torch", "transformers", "peft")


def visible_gpus(system: System, gpu) -> int:
    """GPUs a launched process would see: NVML's count, narrowed by CUDA_VISIBLE_DEVICES."""
    count = len(gpu.gpus) if gpu and gpu.present else 0
    mask = system.env.get("CUDA_VISIBLE_DEVICES")
    if mask is not None:
        count = min(count, len([d for d in mask.split(",") if d.strip() and not d.strip().startswith("-")]))
    return count


def launcher_argv(ctx: Context, nproc: int, script: str, nnodes: int = 1, node_rank: int = 0,
                  endpoint: str | None = None) -> list[str]:
    """One process (python), or N through torchrun — the launcher that ships with torch, by way of
    train/launch.py, which stops on Ctrl-C / SIGTERM as one process does (no torchrun traceback). Several nodes:
    torchrun's static rendezvous at node 0's endpoint, so node ranks (and global rank 0, the writer) are the
    ones given, not the order in which nodes arrive."""
    if nnodes > 1:
        return [ctx.python, str(asset("train", "launch.py")), "--nnodes", str(nnodes), "--node-rank", str(node_rank),
                "--rdzv-backend", "static", "--rdzv-endpoint", str(endpoint), "--nproc-per-node", str(nproc), script]
    if nproc <= 1:
        return [ctx.python, script]
    return [ctx.python, str(asset("train", "launch.py")), "--standalone", "--nproc-per-node", str(nproc), script]


def _earlier_run(outdir: Path, resume: bool) -> str | None:
    """What a new run would start over on top of: a finished run, or checkpoints. --resume continues
    from the latest checkpoint whatever is there (a finished run resumes to the same end)."""
    if resume:
        return None
    if (outdir / "run_summary.json").exists():
        return "a finished run (run_summary.json)"
    if (outdir / "checkpoints").is_dir() and any((outdir / "checkpoints").iterdir()):
        return "checkpoints of an unfinished run"
    return None


# What a checkpoint depends on: the adapter's shapes and the data's chunking and order. num_epochs,
# learning_rate, save_steps and the like may change between a run and its resume.
RESUME_KEYS = ("base_model", "model_config", "tokenizer", "datasets", "sequence_len", "chunk_overlap", "val_set_size",
               "seed", "sample_packing", "micro_batch_size", "gradient_accumulation_steps", "adapter", "load_in_4bit",
               "lora_r", "lora_target_modules", "lora_target_linear", "lora_modules_to_save", "fsdp")


def _changed_for_resume(previous: Path, resolved: dict) -> list[str]:
    try:
        old = json.loads(previous.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [k for k in RESUME_KEYS if k in old and old[k] != resolved.get(k)] if isinstance(old, dict) else []


def check_nodes(args) -> None:
    """--nnodes / --node-rank / --rdzv-endpoint: consistent, or a UsageError saying what is expected."""
    nnodes, rank, endpoint = (getattr(args, k, None) for k in ("nnodes", "node_rank", "rdzv_endpoint"))
    if nnodes is not None and nnodes > 1 and rank is None:  # two nodes both defaulting to 0 would collide
        raise UsageError(f"--nnodes {nnodes} needs --node-rank R on each node (0 on the node at --rdzv-endpoint)")
    nnodes, rank = 1 if nnodes is None else nnodes, rank or 0
    if nnodes < 1:
        raise UsageError("--nnodes must be at least 1")
    if nnodes == 1:
        if rank or endpoint:
            raise UsageError("--node-rank and --rdzv-endpoint go with --nnodes N (N > 1)")
        return
    if not 0 <= rank < nnodes:
        raise UsageError(f"--node-rank {rank}: expected 0..{nnodes - 1} with --nnodes {nnodes}")
    if not endpoint:
        raise UsageError(f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT (node 0's address and a free port on it)")
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--rdzv-endpoint {endpoint!r}: expected HOST:PORT (node 0's address and a free port "
                         "on it, the same on every node)")


def output_dir_problem(outdir) -> str | None:
    """Whether the runner can write its output folder (created if missing)."""
    import os
    import tempfile
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=outdir, prefix=".envdoctor-write-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"output_dir {outdir} is not writable: {e.strerror or e}"
    return None


def _remove_made(made: list) -> None:
    """A refused run leaves no folder it made: `made` (the output folder and the parents it lacked, deepest
    first) removed while empty; rmdir never takes a folder with anything in it."""
    for folder in made:
        try:
            folder.rmdir()
        except OSError:
            return


def resume_command(args, config: str, output_dir: str) -> str:
    """What continues this run after a stop (the runner prints it): the same config (or --demo), output
    folder, interpreter and the settings a checkpoint depends on (--fsdp); any number of processes. Several
    nodes: this node's command (its own --node-rank; without the node flags it would start a one-node run)."""
    argv = ["envdoctor", "train", *(["--demo"] if args.demo else [config]), "--resume"]
    argv += ["--output-dir", output_dir] if args.output_dir else []
    argv += ["--fsdp"] if args.fsdp else []
    argv += ["--nproc", str(args.nproc)] if args.nproc else []
    nnodes = getattr(args, "nnodes", None) or 1
    if nnodes > 1:
        argv += ["--nnodes", str(nnodes), "--node-rank", str(getattr(args, "node_rank", None) or 0),
                 "--rdzv-endpoint", str(args.rdzv_endpoint)]
    argv += ["--python", args.python] if getattr(args, "python", None) else []
    return shlex.join(argv)


def run_train(args, system: System, ctx: Context, out=sys.stdout) -> int:
    path = asset("train", "configs", "demo.yaml") if args.demo else args.config
    if path is None:
        raise UsageError("name a config (e.g. train/configs/qlora_style_transfer.yaml) or pass --demo")
    axolotl = args.backend == "axolotl"
    if axolotl and (args.demo or args.resume or args.nproc or args.fsdp):
        raise UsageError("--backend axolotl takes a config only: axolotl resumes with its own "
                         "resume_from_checkpoint key, launches its own processes and sets FSDP in its config")
    if args.nproc is not None and args.nproc < 1:
        raise UsageError("--nproc must be at least 1")
    check_nodes(args)
    nnodes = getattr(args, "nnodes", None) or 1
    if axolotl and nnodes > 1:
        raise UsageError("--backend axolotl launches its own processes: --nnodes is for the bundled runner")
    early = None
    if axolotl:  # said first: nothing about the config or the machine matters to a run that cannot start
        early = engine.start_facts(["python"], registry.PROVIDERS, system, ctx)  # the preflight's probe, reused
        try:
            probe = early["python"].result(timeout=ctx.probe_timeout + 5)
        except TimeoutError:  # a probe held past its timeout (pipes kept open): the preflight reports it
            probe = None
        missing_axolotl = axolotl_missing(probe.value) if probe and probe.value is not None else None
        if missing_axolotl:
            out.write(f"error: {missing_axolotl}\n")
            return 1
    # Command-line settings are config keys: validated with the config and seen by the preflight's memory
    # estimate (per GPU under FSDP) exactly as the runner will see them.
    overrides = {**({"fsdp": True} if args.fsdp else {}),
                 **({"output_dir": os.path.abspath(args.output_dir)} if args.output_dir else {})}
    cfg = load(path)
    if overrides and not cfg.errors:
        cfg = load_data(path, {**cfg.data, **overrides})
    if axolotl and cfg.warnings:  # axolotl reads the file itself: its own keys are not envdoctor's to judge
        keys = [w.split(": ")[1] for w in cfg.warnings if w.endswith("(not passed to the runner)")]
        out.write(f"note: {len(keys)} key(s) envdoctor's checks do not read are left to axolotl: {', '.join(keys)}\n")
    else:
        for w in cfg.warnings:
            out.write(f"warning: {w}\n")
    if cfg.errors:
        out.write(f"{len(cfg.errors)} error(s) in the config:\n" + "".join(f"  {e}\n" for e in cfg.errors))
        return 2
    checks = [registry.load()[c] for c in PREFLIGHT]
    ctx = dataclasses.replace(ctx, train_config=str(path),  # config.memory: will it fit this GPU?
                              train_engine="peft" if axolotl else "runner", train_nproc=args.nproc,
                              train_overrides=tuple(overrides.items()),
                              train_download=bool(getattr(args, "download", False)))
    run = engine.run_checks(checks, registry.PROVIDERS, system, ctx, started=early)
    python = run.facts.get("python")
    missing = [p for p in RUNTIME if python and python.value and python.value.get(p) is None]
    failing = [r for r in run.results if r.status in failing_statuses()]
    tolerated = axolotl and cpu_tolerated_extensions(run.facts["binaries"].value if run.facts.get("binaries") else None,
                                                     run.facts["torch"].value if run.facts.get("torch") else None)
    if tolerated:  # pip's axolotl beside a CPU torch: CUDA builds that its CPU path never loads
        failing = [r for r in failing if r.check_id != "binaries.extensions"]
    out.write(f"preflight ({ctx.python}): " + ", ".join(f"{r.check_id} {r.status.value}" for r in run.results) + "\n")
    for r in run.results:  # a run that fits only inside the estimate's known error starts, but says so first
        if r.check_id == "config.memory" and r.status == Status.WARN:
            out.write(f"  [!] {r.check_id}: {r.message}\n" + (f"      {r.remedy.text}\n" if r.remedy else ""))
    if missing:
        out.write(f"the target environment lacks {', '.join(missing)}: "
                  f"{ctx.python} -m pip install {' '.join(missing)}  (or envdoctor install --recipe cpu)\n")
    if failing or missing:
        for r in failing:
            out.write(f"  [✗] {r.check_id}: {r.message}\n" + "".join(f"      {d}\n" for d in r.details))
        if not args.force:
            out.write("refusing to start a run that cannot work (--force overrides; `envdoctor check` has the fixes)\n")
            return 1
        out.write("--force: starting anyway\n")
    if tolerated:
        out.write(f"  binaries.extensions: {', '.join(tolerated)} are CUDA builds that cannot load beside a CPU-only "
                  "torch; axolotl on the CPU does not need them (torchao logs 'Failed to load' and goes on)\n")
    if axolotl:
        argv = axolotl_argv(system, ctx, "train", str(path))  # the user's own file, unchanged
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        return system.stream(argv, env=axolotl_env(system, argv[0]))
    gpus = visible_gpus(system, run.facts.get("gpu").value if run.facts.get("gpu") else None)
    nproc = args.nproc or (gpus if gpus > 1 else 1)
    if gpus and nproc > gpus:
        raise UsageError(f"--nproc {nproc}: only {gpus} GPU(s) visible")
    resolved = cfg.resolved()
    resolved.update(absolute_inputs(resolved, resolved["config_dir"]))  # one rule: relative to the config
    outdir = Path(resolved["output_dir"])
    made = [p for p in (outdir, *outdir.parents) if not p.exists()]  # what a refusal below must take back
    problem = output_dir_problem(outdir)
    if problem:
        _remove_made(made)
        out.write(f"error: {problem}\n")
        return 2
    node_rank = getattr(args, "node_rank", None) or 0
    if not args.dry_run and node_rank == 0:  # node 0 alone decides about the shared folder
        earlier = _earlier_run(outdir, args.resume)
        if earlier and not args.force:
            out.write(f"{outdir} already holds {earlier}: continue it with --resume, or pass --force to start "
                      "over (the earlier run is moved aside, not deleted)\n")
            return 2
        if earlier:
            aside = outdir.with_name(f"{outdir.name}.{time.strftime('%Y%m%d-%H%M%S')}")
            outdir.rename(aside)
            outdir.mkdir(parents=True)
            out.write(f"--force: the earlier run is now in {aside}\n")
    if not args.dry_run:  # the checkpoints, float base and adapter the run writes: room for them?
        facts, texts = run.facts.get("train_config"), run.facts.get("datasets")
        chunks = texts.value.max_train_chunks if texts and texts.value else None
        short = space_problem(resolved, facts.value.model if facts and facts.value else None, outdir,
                              gpu=gpus > 0, resume=args.resume,
                              epoch_steps=steps_per_epoch(chunks, resolved["micro_batch_size"],
                                                          resolved["gradient_accumulation_steps"]) if chunks else None)
        if short:
            line, certain = short
            out.write(f"{'error' if certain and not args.force else 'warning'}: {line}\n")
            if certain and not args.force:
                _remove_made(made)
                return 1
    if nnodes > 1:
        # Checked again by the runner once every rank is up (rank 0 writes a file, every rank reads it).
        out.write(f"node {node_rank} of {nnodes}: output_dir {outdir} must be one shared folder (same path on "
                  "every node: rank 0 writes checkpoints and the adapter, every rank reads them on --resume); the "
                  "datasets and the base model must be at the same paths on every node\n")
    config_path = outdir / "config.resolved.json"
    if args.resume and config_path.exists():
        changed = _changed_for_resume(config_path, resolved)
        if changed:
            out.write(f"--resume: {outdir}'s checkpoints were trained with other values of "
                      f"{', '.join(changed)} (see its config.resolved.json): resuming would not continue that "
                      "run. Put the values back, or start a new run (another output_dir, or --force)\n")
            return 2
    # Atomic: with several nodes sharing the folder, each writes it while another's runner may be reading it.
    staging = outdir / f".config.resolved.{os.getpid()}.{node_rank}.tmp"
    try:
        staging.write_text(json.dumps(resolved, indent=2))
        os.replace(staging, config_path)
    except OSError as exc:  # a full disk (--force past the space check): the runner's exit code and one line
        staging.unlink(missing_ok=True)
        _remove_made(made)
        out.write(f"error: cannot write {config_path}: {exc.strerror or exc}. Free space there, or pass "
                  "--output-dir on another disk\n")
        return 4
    argv = launcher_argv(ctx, nproc, str(asset("train", "qlora.py")), nnodes, node_rank,
                         getattr(args, "rdzv_endpoint", None)) + ["--config", str(config_path)]
    argv += ["--resume"] if args.resume else []
    argv += ["--dry-run"] if args.dry_run else []
    out.write(f"$ {' '.join(argv)}\n")
    out.flush()
    offline = {} if getattr(args, "download", False) else {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    try:
        return system.stream(argv, env={**system.env, "PYTHONUNBUFFERED": "1", **offline,
                                        "TOKENIZERS_PARALLELISM": "false",
                                        "ENVDOCTOR_RESUME_COMMAND": resume_command(args, str(path), str(outdir))},
                             stops_held=True)
    except Stopped as stop:
        if stop.child_code is None:  # killed: it could not say where to resume
            raise
        if nnodes > 1:  # each node's first rank printed this node's command
            out.write(f"node {node_rank} of {nnodes}: every node runs its own line (its own --node-rank), "
                      "all of them at once\n")
        return stop.child_code  # the runner has said where it stopped and how to resume


def main(args) -> int:
    from envdoctor.commands.interpreter import resolve
    system, ctx = resolve(args)
    return run_train(args, system, ctx)
