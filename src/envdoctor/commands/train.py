"""`envdoctor train`: validate the config, run the checks that matter for training and refuse on
failures (unless --force), then run the bundled runner in the target environment."""

from __future__ import annotations

import dataclasses
import json
import sys

from envdoctor import engine, registry
from envdoctor.assets import asset
from envdoctor.context import Context
from envdoctor.errors import UsageError
from envdoctor.model import Status
from envdoctor.system import System
from envdoctor.training.config import load

# What a run needs. The GPU checks skip on a CPU machine (the demo), the rest must pass.
PREFLIGHT = ("python.interpreter", "python.version", "gpu.driver", "gpu.torch", "gpu.driver_cuda", "gpu.arch",
             "gpu.bf16", "packages.requirements", "binaries.extensions", "config.memory")
RUNTIME = ("torch", "transformers", "peft")


def run_train(args, system: System, ctx: Context, out=sys.stdout) -> int:
    path = asset("train", "configs", "demo.yaml") if args.demo else args.config
    if path is None:
        raise UsageError("name a config (e.g. train/configs/qlora_style_transfer.yaml) or pass --demo")
    cfg = load(path)
    for w in cfg.warnings:
        out.write(f"warning: {w}\n")
    if cfg.errors:
        out.write(f"{len(cfg.errors)} error(s) in the config:\n" + "".join(f"  {e}\n" for e in cfg.errors))
        return 2
    checks = [registry.load()[c] for c in PREFLIGHT]
    ctx = dataclasses.replace(ctx, train_config=str(path))  # config.memory: will it fit this GPU?
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
    resolved = cfg.resolved()
    if args.output_dir:
        resolved["output_dir"] = args.output_dir
    from pathlib import Path
    outdir = Path(resolved["output_dir"])
    outdir.mkdir(parents=True, exist_ok=True)
    config_path = outdir / "config.resolved.json"
    config_path.write_text(json.dumps(resolved, indent=2))
    argv = [ctx.python, str(asset("train", "qlora.py")), "--config", str(config_path)]
    argv += ["--resume"] if args.resume else []
    argv += ["--dry-run"] if args.dry_run else []
    out.write(f"$ {' '.join(argv)}\n")
    out.flush()
    return system.stream(argv, env={**system.env, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
                                    "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
