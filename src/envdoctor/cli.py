"""The command line: the parser, dispatch to the verb's module in envdoctor.commands, and the mapping of
errors to exit codes (decided here only). Each verb's body lives in envdoctor/commands/<verb>.py."""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys

from envdoctor import __version__
from envdoctor.commands.interpreter import run_python  # noqa: F401  (cli.run_python: tests/test_train_hygiene.py)
from envdoctor.errors import EXIT_INTERNAL, EXIT_USAGE, EnvdoctorError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits 2 already; keep the message short and ours
        self.print_usage(sys.stderr)
        sys.stderr.write(f"envdoctor: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


class _Unused:
    """What build_parser(verb) hands the other verbs' definitions: every call is accepted and dropped."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: self


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with `verb`, that verb's subcommand only (what `main` parses a known verb with: the
    other verbs' arguments are ~2 ms of every run; the verb's own usage, help and errors come out the same)."""
    p = _Parser(prog="envdoctor", description="Environment doctor for fine-tuning LLMs on your own GPUs.")
    p.add_argument("--version", action="version", version=f"envdoctor {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    if verb is not None:
        add = sub.add_parser
        sub.add_parser = lambda name, **kw: add(name, **kw) if name == verb else _Unused()
    c = sub.add_parser("check", help="probe this machine and a Python environment; report every problem")
    c.add_argument("--json", action="store_true", help="print the JSON report instead of text (= --format json)")
    c.add_argument("--format", choices=("text", "json", "github"), default=None,
                   help="text (default), json, or github: GitHub Actions annotations, then the text report")
    c.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report (one test case per check)")
    c.add_argument("--python", metavar="PATH",
                   help="interpreter (or venv folder) to diagnose; default: the active venv, else this one")
    c.add_argument("--only", nargs="+", metavar="ID", default=[],
                   help="run only these checks (ids, category prefixes like 'packages', or globs)")
    c.add_argument("--skip", nargs="+", metavar="ID", default=[], help="skip these checks")
    c.add_argument("--strict", action="store_true", help="warnings fail too (exit 1)")
    c.add_argument("--deep", action="store_true",
                   help="also import the training stack for real (any machine) and run smoke tests on the GPU "
                        "(torch, bitsandbytes, flash-attn, torchao), each in a timeout-bounded subprocess")
    c.add_argument("--recipe", metavar="NAME", help="also compare the environment with this recipe (name or file)")
    c.add_argument("--config", metavar="FILE", help="also validate a training config and estimate its GPU memory")
    c.add_argument("--backend", choices=("runner", "axolotl"), default="runner",
                   help="with --config: whose memory to estimate, as for `envdoctor train --backend` (axolotl: the "
                        "Hugging Face path, the larger of a PEFT-docs loop and transformers' Trainer)")
    c.add_argument("--nproc", type=int, metavar="N",
                   help="with --config: the processes `envdoctor train --nproc N` would start (one GPU each; default: "
                        "every visible GPU)")
    c.add_argument("--model", metavar="DIR", help="also validate a model folder (a merged model): config, shards, "
                                                  "tokenizer, chat template, stray adapter files, vLLM support")
    c.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="timeout for probing the target interpreter (default 30 s)")
    c.add_argument("--smoke-timeout", type=float, default=120.0, metavar="S",
                   help="timeout for each --deep smoke test (default 120 s)")
    c.add_argument("-v", "--verbose", action="store_true", help="timings, details of passing checks, tracebacks")
    c.add_argument("--problems", action="store_true",
                   help="show only warnings, failures and errors (a healthy environment prints the summary alone)")
    ck = sub.add_parser("checks", help="list every check: id, title and what it looks at")
    ck.add_argument("--markdown", action="store_true", help="as the Markdown table of docs/checks.md")
    f = sub.add_parser("fix", help="apply the scripted fixes for failing checks: plan, confirm, apply, verify")
    f.add_argument("ids", nargs="*", metavar="ID", help="fix ids to apply (see `envdoctor check` remedies)")
    f.add_argument("--all", action="store_true", help="every fix for every failing finding")
    f.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    f.add_argument("--yes", action="store_true", help="do not ask (needed without a terminal)")
    f.add_argument("--python", metavar="PATH", help="interpreter (or venv folder) to fix")
    f.add_argument("--restart-wsl", action="store_true",
                   help="after wsl.memory, run `wsl.exe --shutdown` through interop (ends this WSL session)")
    f.add_argument("--timeout", type=float, default=30.0, metavar="S", help=argparse.SUPPRESS)
    t = sub.add_parser("train", help="preflight, then the bundled QLoRA runner in the target environment")
    t.add_argument("config", nargs="?", help="training config (YAML, the seed's keys)")
    t.add_argument("--demo", action="store_true", help="the offline CPU demo: a tiny Llama on train/demo_corpus")
    t.add_argument("--dry-run", action="store_true", help="validate, preflight, prepare the data; train nothing")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    t.add_argument("--force", action="store_true", help="start even when the preflight fails")
    t.add_argument("--output-dir", help="override the config's output_dir")
    t.add_argument("--python", metavar="PATH", help="interpreter (or venv folder) to train with")
    t.add_argument("--backend", choices=("runner", "axolotl"), default="runner",
                   help="runner: envdoctor's bundled runner (default); axolotl: `axolotl train CONFIG` after the "
                        "preflight")
    t.add_argument("--nproc", type=int, metavar="N",
                   help="data-parallel processes through torchrun (default: every visible GPU; 1 on a CPU)")
    t.add_argument("--nnodes", type=int, default=1, metavar="N",
                   help="nodes in the run (torchrun's static rendezvous; start `envdoctor train` on each node with "
                        "the same config, --nnodes and --rdzv-endpoint, and its own --node-rank)")
    t.add_argument("--node-rank", type=int, default=0, metavar="R", help="this node's rank, 0..N-1 (0 hosts the "
                   "rendezvous and holds global rank 0, the one that writes)")
    t.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="node 0's address and a free port on it")
    t.add_argument("--fsdp", action="store_true",
                   help="shard parameters, gradients and optimizer state over the processes (FSDP2) instead of "
                        "DDP; a 4-bit base too (for a model that does not fit one GPU: docs/training.md)")
    t.add_argument("--download", action="store_true",
                   help="let the run download the base model from the Hugging Face hub (runs are offline otherwise)")
    t.add_argument("--timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    m = sub.add_parser("merge", help="merge a run's adapter into its bf16 base, verify it, ready for vLLM")
    m.add_argument("run", metavar="RUN_DIR", help="an `envdoctor train` output folder (with --backend axolotl: "
                                                  "the axolotl config)")
    m.add_argument("--out", metavar="DIR", help="where the merged model goes (default RUN_DIR/merged)")
    m.add_argument("--base", metavar="DIR", help="base model folder (default: from the run's provenance)")
    m.add_argument("--from-nf4", action="store_true",
                   help="merge into the NF4-dequantized base weights (what 4-bit training saw) instead of bf16")
    m.add_argument("--device", default="auto", help="auto (GPU when there is one), cuda or cpu")
    m.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"), default="auto",
                   help="dtype of the merged weights (default: the base's, bf16 for Llama)")
    m.add_argument("--backend", choices=("envdoctor", "axolotl"), default="envdoctor")
    m.add_argument("--python", metavar="PATH", help="interpreter (or venv folder) to merge with")
    m.add_argument("--timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    e = sub.add_parser("eval", help="style-transfer score and perplexity: the base against the merged model")
    e.add_argument("run", metavar="RUN_DIR", help="an `envdoctor train` output folder")
    e.add_argument("--merged", metavar="DIR", help="the merged model (default RUN_DIR/merged)")
    e.add_argument("--base", metavar="DIR", help="base model folder (default: from the run's provenance)")
    e.add_argument("--prompts", metavar="FILE", help="prompts, one per line or jsonl with \"prompt\" "
                                                     "(default: openings of held-out chunks)")
    e.add_argument("--max-new-tokens", type=int, default=48)
    e.add_argument("--python", metavar="PATH", help="interpreter (or venv folder) to run the models with")
    e.add_argument("--timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    rp = sub.add_parser("report", help="merge JSON reports from many nodes: which nodes differ in what")
    rp.add_argument("action", choices=("merge",))
    rp.add_argument("files", nargs="+", metavar="REPORT", help="envdoctor check --json outputs, or pdsh output files")
    rp.add_argument("--json", action="store_true", help="the differences as JSON")
    r = sub.add_parser("recipes", help="known-good stacks: list, show NAME, validate FILE")
    r.add_argument("action", choices=("list", "show", "validate"))
    r.add_argument("name", nargs="?", metavar="NAME|FILE")
    i = sub.add_parser("install", help="create a fresh venv and install a recipe's stack in the right order")
    i.add_argument("--venv", required=True, metavar="PATH", help="the venv to create (must not exist, or be empty)")
    i.add_argument("--recipe", metavar="NAME", help="recipe name or file; default: picked from the GPU and driver")
    i.add_argument("--base-python", metavar="PATH", help="interpreter that creates the venv (default: this one)")
    i.add_argument("--dry-run", action="store_true", help="show the steps, change nothing")
    w = sub.add_parser("wslconfig", help="set values in a .wslconfig, changing no other byte (diff, backup, atomic)")
    w.add_argument("action", choices=("set",))
    w.add_argument("file", metavar="FILE", help="the .wslconfig (any path; a symlink's target is edited)")
    w.add_argument("pairs", nargs="+", metavar="KEY=VALUE", help="[wsl2] keys to set, e.g. memory=48GB processors=12")
    w.add_argument("--dry-run", action="store_true", help="print the diff, change nothing")
    return p


# verb -> its module in envdoctor.commands (imported when the verb runs: `envdoctor checks` stays quick)
VERBS = {"check": "check", "checks": "checks", "fix": "fix", "recipes": "recipes", "install": "install",
         "train": "train", "merge": "merge", "eval": "evaluate", "report": "report", "wslconfig": "wslconfig"}


def _closed_pipe() -> int:
    """The reader went away (`envdoctor checks | head -1`): stop quietly, like any Unix filter (128 + SIGPIPE).
    stdout points at /dev/null from here so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return 141


def main(argv: list[str] | None = None) -> int:
    if sys.stdout is None:  # started with stdout closed (`>&-`): the output goes nowhere, as with a closed pipe
        sys.stdout = open(os.devnull, "w", encoding="utf-8")
    first = (sys.argv[1:] if argv is None else argv)[:1]
    parser = build_parser(first[0] if first and first[0] in VERBS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    # `check` is a short run that allocates ~100 modules' worth of objects and frees next to nothing: the cyclic
    # collector's passes over them are pure cost there (~5% of a run). Back on when it ends (tests call main).
    paused = args.command == "check" and gc.isenabled()
    if paused:
        gc.disable()
    try:
        code = importlib.import_module(f"envdoctor.commands.{VERBS[args.command]}").main(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit flush
        return code
    except BrokenPipeError:
        return _closed_pipe()
    except EnvdoctorError as exc:
        print(f"envdoctor: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as stop:  # system.Stopped carries SIGTERM's 143
        print("envdoctor: interrupted", file=sys.stderr)
        return getattr(stop, "exit_code", 130)
    except Exception:  # noqa: BLE001 - last resort: a pasteable report, never a bare traceback
        import platform  # here, not at the top: every run pays for a module-level import
        import traceback
        print(f"envdoctor {__version__} hit an internal error (Python {platform.python_version()}, "
              f"{platform.platform()}). Please report it with this output:\n{traceback.format_exc()}",
              file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        if paused:
            gc.enable()


def run() -> None:
    """The `envdoctor` command (the console script and `python -m envdoctor`): `main`, then for `check` an exit
    without the interpreter's teardown, which frees ~170 modules' objects one by one (~10 ms of a ~0.1 s
    command). Everything is written and flushed by then; envdoctor leaves nothing to atexit, finalizers or
    non-daemon threads. The other verbs exit the usual way."""
    code = main()
    if sys.argv[1:2] != ["check"]:
        raise SystemExit(code)
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # started with that descriptor closed (`>&-`): Python sets the stream to None
            continue
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away: main has answered for it (141)
            pass
    os._exit(code)
