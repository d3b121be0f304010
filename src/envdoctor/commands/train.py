"""`envdoctor train`: validate the config, run the checks that matter for training and refuse on
failures (unless --force), then run the bundled runner in the target environment — through torchrun
when more than one GPU is visible (or with --nproc) — or hand the config to `axolotl train`."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from envdoctor import engine, registry
from envdoctor.assets import asset
from envdoctor.context import Context
from envdoctor.errors import UsageError
from envdoctor.model import Status
from envdoctor.system import System
from envdoctor.training.backends import axolotl_argv
from envdoctor.training.config import load, load_data

# What a run needs. The GPU checks skip on a CPU machine (the demo), the rest must pass.
PREFLIGHT = ("python.interpreter", "python.version", "gpu.driver", "gpu.torch", "gpu.driver_cuda", "gpu.arch",
             "gpu.bf16", "packages.requirements", "binaries.extensions", "config.memory")
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
    """One process (python), or N through torchrun — the launcher that ships with torch. Several nodes:
    torchrun's static rendezvous at node 0's endpoint, so node ranks (and global rank 0, the writer) are the
    ones given, not the order in which nodes arrive."""
    if nnodes > 1:
        return [ctx.python, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--node-rank", str(node_rank),
                "--rdzv-backend", "static", "--rdzv-endpoint", str(endpoint), "--nproc-per-node", str(nproc), script]
    if nproc <= 1:
        return [ctx.python, script]
    return [ctx.python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), script]


def check_nodes(args) -> None:
    """--nnodes / --node-rank / --rdzv-endpoint: consistent, or a UsageError saying what is expected."""
    nnodes, rank, endpoint = (getattr(args, k, None) for k in ("nnodes", "node_rank", "rdzv_endpoint"))
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
    cfg = load(path)
    if args.fsdp and not cfg.errors:  # validated with the config: FSDP and a 4-bit base are refused together
        cfg = load_data(path, {**cfg.data, "fsdp": True})
    for w in cfg.warnings:
        out.write(f"warning: {w}\n")
    if cfg.errors:
        out.write(f"{len(cfg.errors)} error(s) in the config:\n" + "".join(f"  {e}\n" for e in cfg.errors))
        return 2
    checks = [registry.load()[c] for c in PREFLIGHT]
    ctx = dataclasses.replace(ctx, train_config=str(path),  # config.memory: will it fit this GPU?
                              train_engine="peft" if axolotl else "runner")
    run = engine.run_checks(checks, registry.PROVIDERS, system, ctx)
    python = run.facts.get("python")
    missing = [p for p in RUNTIME if python and python.value and python.value.get(p) is None]
    failing = [r for r in run.results if r.status in (Status.FAIL, Status.ERROR)]
    out.write(f"preflight ({ctx.python}): " + ", ".join(f"{r.check_id} {r.status.value}" for r in run.results) + "\n")
    if missing:
        out.write(f"the target environment lacks {', '.join(missing)}: "
                  f"{ctx.python} -m pip install {' '.join(missing)}  (or envdoctor install --recipe cpu)\n")
    if failing or missing:
        for r in failing:
            out.write(f"  [✗] {r.check_id}: {r.message}\n")
        if not args.force:
            out.write("refusing to start a run that cannot work (--force overrides; `envdoctor check` has the fixes)\n")
            return 1
        out.write("--force: starting anyway\n")
    if axolotl:
        argv = axolotl_argv(system, ctx, "train", str(path))  # the user's own file, unchanged
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        return system.stream(argv, env={**system.env, "PYTHONUNBUFFERED": "1"})
    gpus = visible_gpus(system, run.facts.get("gpu").value if run.facts.get("gpu") else None)
    nproc = args.nproc or (gpus if gpus > 1 else 1)
    if gpus and nproc > gpus:
        raise UsageError(f"--nproc {nproc}: only {gpus} GPU(s) visible")
    resolved = cfg.resolved()
    if args.output_dir:
        resolved["output_dir"] = args.output_dir
    from pathlib import Path
    outdir = Path(resolved["output_dir"])
    problem = output_dir_problem(outdir)
    if problem:
        out.write(f"error: {problem}\n")
        return 2
    if nnodes > 1:
        # Checked again by the runner once every rank is up (rank 0 writes a file, every rank reads it).
        out.write(f"node {args.node_rank} of {nnodes}: output_dir {outdir} must be one shared folder (same path on "
                  "every node: rank 0 writes checkpoints and the adapter, every rank reads them on --resume); the "
                  "datasets and the base model must be at the same paths on every node\n")
    config_path = outdir / "config.resolved.json"
    # Atomic: with several nodes sharing the folder, each writes it while another's runner may be reading it.
    staging = outdir / f".config.resolved.{os.getpid()}.{getattr(args, 'node_rank', 0)}.tmp"
    staging.write_text(json.dumps(resolved, indent=2))
    os.replace(staging, config_path)
    argv = launcher_argv(ctx, nproc, str(asset("train", "qlora.py")), nnodes, getattr(args, "node_rank", 0),
                         getattr(args, "rdzv_endpoint", None)) + ["--config", str(config_path)]
    argv += ["--resume"] if args.resume else []
    argv += ["--dry-run"] if args.dry_run else []
    out.write(f"$ {' '.join(argv)}\n")
    out.flush()
    return system.stream(argv, env={**system.env, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
                                    "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
