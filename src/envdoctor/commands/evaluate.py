"""`envdoctor eval RUN_DIR`: the base and the merged model against the run's corpus (train/eval.py in
the target environment): style-transfer score and held-out perplexity of both."""

from __future__ import annotations

import sys
from pathlib import Path

from envdoctor.assets import asset
from envdoctor.context import Context
from envdoctor.errors import UsageError
from envdoctor.system import System
from envdoctor.training.runtime import require


def run_eval(args, system: System, ctx: Context, out=sys.stdout) -> int:
    run = Path(args.run)
    for need in ("run_summary.json", "config.resolved.json", "heldout.json"):
        if not (run / need).is_file():
            raise UsageError(f"{run / need}: not found; RUN_DIR is a finished `envdoctor train` output folder")
    merged = Path(args.merged) if args.merged else run / "merged"
    if not (merged / "config.json").is_file():
        raise UsageError(f"{merged}: no merged model; run `envdoctor merge {run}` first (or pass --merged DIR)")
    if args.prompts and not Path(args.prompts).is_file():
        raise UsageError(f"--prompts {args.prompts}: no such file")
    require(system, ctx, ["torch", "transformers"], "envdoctor eval")
    argv = [ctx.python, str(asset("train", "eval.py")), "--run", str(run), "--merged", str(merged),
            "--max-new-tokens", str(args.max_new_tokens), "--report", str(run / "eval_report.json")]
    argv += ["--prompts", args.prompts] if args.prompts else []
    argv += ["--base", args.base] if args.base else []
    out.write(f"$ {' '.join(argv)}\n")
    out.flush()
    code = system.stream(argv, env={**system.env, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
                                    "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    if code == 0:
        out.write(f"report: {run / 'eval_report.json'}\n")
    return code


def main(args) -> int:
    from envdoctor.commands.interpreter import resolve, run_python
    run_python(args)
    system, ctx = resolve(args)
    return run_eval(args, system, ctx)
