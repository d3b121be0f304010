"""`envdoctor check`: probe this machine and a Python environment, run the selected checks, report."""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import sys

from envdoctor import __version__
from envdoctor.commands.interpreter import resolve
from envdoctor.errors import UsageError


def select(checks: dict, only: list[str], skip: list[str], enabled: frozenset = frozenset()) -> list:
    def matches(pattern: str) -> set[str]:
        hits = {cid for cid in checks if cid == pattern or cid.startswith(pattern + ".")
                or fnmatch.fnmatchcase(cid, pattern)}
        if not hits:
            from difflib import get_close_matches
            near = get_close_matches(pattern, list(checks), n=3)
            raise UsageError(f"unknown check {pattern!r}" + (f"; did you mean {', '.join(near)}?" if near else
                                                            "; `envdoctor checks` lists them"))
        return hits
    # Checks behind an option (--deep, --recipe) run with it, or when --only names them.
    chosen = set().union(*(matches(p) for p in only)) if only else {
        c for c in checks if checks[c].option is None or checks[c].option in enabled}
    dropped = set().union(*(matches(p) for p in skip)) if skip else set()
    return [c for cid, c in checks.items() if cid in chosen - dropped]


def main(args) -> int:
    if args.smoke_timeout <= 0:
        raise UsageError("--smoke-timeout must be positive")
    if args.recipe:
        from envdoctor.recipes import load
        load(args.recipe)  # a bad name or file is a usage error before anything runs
    system, ctx = resolve(args)
    # The target's probe is a process of its own: started before the imports below, it runs on the other
    # core while they run on this one (the python provider picks its result up).
    from envdoctor import target
    from envdoctor.facts import prestart
    prestart.start(system, target.argv(ctx.python, "probe"), ctx.probe_timeout)
    from envdoctor import engine, registry
    from envdoctor.report import exit_code

    if args.config and not os.path.isfile(args.config):
        raise UsageError(f"--config {args.config}: no such file")
    if args.model and not os.path.isdir(args.model):
        raise UsageError(f"--model {args.model}: no such folder")
    nproc = getattr(args, "nproc", None)
    if nproc is not None and nproc < 1:
        raise UsageError("--nproc must be at least 1")
    axolotl = getattr(args, "backend", "runner") == "axolotl"
    if axolotl and nproc:
        raise UsageError("--backend axolotl launches its own processes: --nproc is for the bundled runner")
    ctx = dataclasses.replace(ctx, smoke_timeout=args.smoke_timeout, recipe=args.recipe, train_config=args.config,
                              model_dir=args.model, train_engine="peft" if axolotl else "runner", train_nproc=nproc)
    python, reason = ctx.python, ctx.python_reason
    from envdoctor.facts.smoke import STAGES
    # The subprocesses are the slow part: start them before importing the checks. Almost every selection
    # needs the Python probe; --deep needs every smoke test.
    early = engine.start_facts(["python"] + ([f"smoke_{s}" for s in STAGES] if args.deep else []),
                               registry.PROVIDERS, system, ctx)
    enabled = frozenset(n for n, on in (("deep", args.deep), ("recipe", args.recipe), ("config", args.config),
                                        ("model", args.model)) if on)
    checks = select(registry.load(), args.only, args.skip, enabled)
    run = engine.run_checks(checks, registry.PROVIDERS, system, ctx, started=early)
    code = exit_code(run.results, args.strict)
    fmt = "json" if args.json else (args.format or "text")
    if args.junit:
        import platform
        from envdoctor.report import junit
        try:
            system.write_bytes(args.junit, junit.build(run.results, run.duration_s, args.strict, platform.node()))
        except OSError as exc:  # a folder that is a file, no permission, a full disk: the option's fault
            raise UsageError(f"--junit {args.junit}: cannot write it ({exc.strerror or exc})") from None
    if fmt == "json":
        from envdoctor.report import json_report
        json_report.render(run, {"python": python, "reason": reason}, __version__, code, sys.stdout)
        return code
    if fmt == "github":
        from envdoctor.report import github
        github.render(run.results, sys.stdout)
    from envdoctor.report import text
    text.render(run, f"{python} ({reason})", __version__, sys.stdout, verbose=args.verbose,
                problems=getattr(args, "problems", False))
    return code
