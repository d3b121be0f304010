"""`envdoctor merge RUN_DIR`: the adapter of a run merged into its bf16 base (train/merge.py in the
target environment), verified against base + adapter (train/verify.py), recorded so that a second merge
of the same inputs is a no-op. With --backend axolotl: `axolotl merge-lora CONFIG`."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

from envdoctor.assets import asset
from envdoctor.context import Context
from envdoctor.errors import UsageError
from envdoctor.redact import redact
from envdoctor.system import System
from envdoctor.training.backends import axolotl_argv, axolotl_env, axolotl_missing
from envdoctor.training.runtime import require

MANIFEST = "envdoctor-merge.json"
WRITE_FAILED = 4  # train/merge.py could not write the merged model (a full disk): it said so in one line
# merge.py writes here; the folder takes its real name only once verify.py has passed it. A merge killed
# while being verified leaves this name behind, which says what it is.
UNVERIFIED = ".unverified"


def staging(dest: Path) -> Path:
    return dest.with_name(dest.name + UNVERIFIED)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(base: Path, adapter: Path, from_nf4: bool, dtype: str) -> dict:
    """What the merged weights depend on: the adapter's bytes, the base's files, the mode."""
    weights = sorted(p for p in base.iterdir() if p.suffix == ".safetensors" or p.name.endswith(".index.json"))
    return {"adapter_sha256": _sha256(adapter / "adapter_model.safetensors"),
            "adapter_config_sha256": _sha256(adapter / "adapter_config.json"),
            "base": str(base.resolve()), "base_files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns]
                                                        for p in weights},
            "from_nf4": from_nf4, "dtype": dtype}


def complete(out: Path, fp: dict) -> bool:
    """An earlier merge of these inputs, verified, with every shard still there at its size."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return False
    files = manifest.get("files", {})
    return (manifest.get("inputs") == fp and manifest.get("verified") is True and bool(files)
            and all((out / n).is_file() and (out / n).stat().st_size == s for n, s in files.items()))


def resolve_base(run: Path, summary: dict, override: str | None, system: System) -> Path:
    from envdoctor.facts.host import hf_cache_dir
    name = override or summary.get("base_model_path") or summary.get("base_model")
    if not name:
        raise UsageError(f"{run / 'run_summary.json'}: base_model: missing; pass --base DIR")
    candidates = [Path(name)] if Path(name).is_absolute() else [run / name, Path(name)]
    snap = Path(hf_cache_dir(system.env)) / f"models--{name.replace('/', '--')}" / "snapshots"
    candidates += sorted(snap.iterdir()) if snap.is_dir() else []
    for c in candidates:
        if (c / "config.json").is_file():
            return c
    raise UsageError(f"base model {name!r} not found locally (looked in {', '.join(map(str, candidates))}); "
                     f"download it (hf download {name}; gated models: hf auth login first) or pass --base DIR")


def publish(stage: Path, dest: Path) -> None:
    """Move a verified merge into place. An earlier merge at `dest` is moved aside first and removed only
    after the rename, so a crash in between leaves one complete folder under one of the two names."""
    old = None
    try:
        if dest.exists():
            old = dest.with_name(f"{dest.name}.replaced-{os.getpid()}")
            dest.rename(old)
        stage.rename(dest)
    except BaseException:  # a Ctrl-C or an error between the two renames: the earlier merge gets its name back
        if old is not None and old.exists() and not dest.exists():
            old.rename(dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run_merge(args, system: System, ctx: Context, out=sys.stdout) -> int:
    if args.backend == "axolotl":
        from envdoctor.errors import FactError
        from envdoctor.facts.python_env import probe_python
        try:
            missing = axolotl_missing(probe_python(system, ctx), "merge-lora")
        except FactError:  # the interpreter cannot be probed: axolotl_argv below says what it can
            missing = None
        if missing:
            out.write(f"error: {missing}\n")
            return 1
        argv = axolotl_argv(system, ctx, "merge-lora", args.run)
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        return system.stream(argv, env=axolotl_env(system, argv[0]))
    run = Path(args.run)
    summary_path = run / "run_summary.json"
    try:
        summary = json.loads(summary_path.read_text())
    except OSError:
        raise UsageError(f"{summary_path}: not found; RUN_DIR is a finished `envdoctor train` output folder")
    except ValueError as exc:
        raise UsageError(f"{summary_path}: not valid JSON ({exc})")
    if not isinstance(summary, dict):
        raise UsageError(f"{summary_path}: expected a JSON object (the run's summary), got {type(summary).__name__}")
    for key in ("adapter", "base_model_path", "base_model"):
        if summary.get(key) is not None and not isinstance(summary[key], str):
            raise UsageError(f"{summary_path}: {key}: expected a path or model name, got {summary[key]!r:.60}")
    adapter = Path(summary.get("adapter") or run / "adapter")
    if not (adapter / "adapter_model.safetensors").is_file():
        raise UsageError(f"{adapter}: no adapter_model.safetensors (did the run finish?)")
    base = resolve_base(run, summary, args.base, system)
    dest = Path(args.out) if args.out else run / ("merged-nf4" if args.from_nf4 else "merged")
    fp = fingerprint(base, adapter, args.from_nf4, args.dtype)
    if complete(dest, fp):
        report = json.loads((dest / MANIFEST).read_text())
        out.write(f"already merged: {dest} holds this adapter merged into {base} and verified "
                  f"(loss {report['verify']['loss_merged']:.4f}); nothing to do\n")
        return 0
    if dest.exists() and any(dest.iterdir()) and not (dest / MANIFEST).exists() \
            and not (dest / "merge_report.json").exists():
        raise UsageError(f"{dest}: exists and is not an envdoctor merge; choose another --out")
    require(system, ctx, ["torch", "safetensors", "transformers", "peft"] + (["bitsandbytes"] if args.from_nf4 else []),
            "envdoctor merge")
    env = {**system.env, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    stage = staging(dest)
    argv = [ctx.python, str(asset("train", "merge.py")), "--base", str(base), "--adapter", str(adapter),
            "--out", str(stage), "--dtype", args.dtype] + (["--from-nf4"] if args.from_nf4 else []) + \
        ["--device", args.device]
    out.write(f"$ {' '.join(argv)}\n")
    out.flush()
    code = system.stream(argv, env=env)
    if code != 0:
        out.write(f"merge failed (exit {code}); {dest} was not changed\n")
        return WRITE_FAILED if code == WRITE_FAILED else 1
    verify_path = stage / "verify_report.json"
    heldout = run / "heldout.json"
    if not heldout.is_file():
        out.write(f"not verified: {heldout} is missing (a run from an older envdoctor); the merge stays in "
                  f"{stage}\n")
        return 1
    argv = [ctx.python, str(asset("train", "verify.py")), "--base", str(base), "--adapter", str(adapter),
            "--merged", str(stage), "--heldout", str(heldout), "--report", str(verify_path), "--device", args.device]
    out.write(f"$ {' '.join(argv)}\n")
    out.flush()
    system.stream(argv, env=env)
    try:
        verify = json.loads(verify_path.read_text())
    except (OSError, ValueError):
        out.write(f"verification did not produce a report (see its output above); the unverified merge stays in "
                  f"{stage}\n")
        return 1
    merge = json.loads((stage / "merge_report.json").read_text())
    out.write(f"verification on {verify['tokens']} held-out tokens: loss {verify['loss_adapter']:.4f} (base + adapter) "
              f"vs {verify['loss_merged']:.4f} (merged); logits max |Δ| {verify['max_abs_diff']:.3g}, mean |Δ| "
              f"{verify['mean_abs_diff']:.3g} (mean |logit| {verify['mean_abs_logit']:.3g}); argmax agreement "
              f"{verify['argmax_agreement']:.1%}\n")
    if args.from_nf4:  # not a failure: the point of this mode is to show what NF4 rounding of the base does
        out.write("merged into the NF4-dequantized base: the difference above is what 4-bit rounding of the base "
                  "weights does to the model; the bf16 merge (the default) reproduces base + adapter\n")
        verify["passed"] = True
    if not verify["passed"]:
        out.write(f"FAILED: the merged model does not reproduce base + adapter (tolerance {verify['tolerance']}).\n")
        if args.dtype != "float32":
            out.write(f"  The adapter changes the logits by {verify['adapter_effect']:.3g} on average; rounding "
                      f"W + B·A to {merge.get('dtype', 'bf16')} changed them by {verify['mean_abs_diff']:.3g}: the adapter's "
                      "deltas are small next to the spacing of the base weights, so part of the adapter is rounded "
                      f"away. Merge in fp32 (twice the size): envdoctor merge {run} --dtype float32, or serve base + "
                      "adapter unmerged (vllm serve BASE --enable-lora --lora-modules run=ADAPTER).\n")
        out.write(f"  The unverified merge stays in {stage}; {dest} was not changed.\n")
        return 1
    files = {p.name: p.stat().st_size for p in stage.iterdir() if p.suffix == ".safetensors"}
    try:
        system.write_text(str(stage / MANIFEST), json.dumps(redact({"inputs": fp, "verified": True, "verify": verify,
                                                                   "merge": merge, "files": files}), indent=2))
    except OSError as exc:  # a full disk even for this small file: the verified merge stays under its staging name
        out.write(f"cannot write {stage / MANIFEST}: {exc.strerror or exc}; the verified merge stays in {stage}, "
                  f"{dest} was not changed: free space, then run the same command again\n")
        return WRITE_FAILED
    publish(stage, dest)
    out.write(f"merged: {dest} ({merge['shards']} shard(s), {merge['bytes'] / 1e9:.2f} GB, {merge['lora_merged']} "
              f"LoRA layers, modules_to_save: {', '.join(merge['replaced']) or 'none'}"
              f"{'; lm_head untied from the embedding: tie_word_embeddings: false' if merge.get('untied_lm_head') else ''}"
              f"; {merge['seconds']:.1f} s) — "
              f"serve it with: vllm serve {shlex.quote(str(dest))}\n")
    pipe = merge.get("pipeline")
    if isinstance(pipe, dict):  # where the merge's time went (busy seconds per stage; the stages overlap)
        out.write(f"  time: {pipe.get('wall_s', 0):.1f} s for read {pipe.get('read_s', 0):.1f} s, merge "
                  f"{pipe.get('merge_s', 0):.1f} s ({merge.get('device', '?')}), write {pipe.get('write_s', 0):.1f} s "
                  f"in parallel, then fsync {pipe.get('sync_s', 0):.1f} s; verification apart\n")
    return 0


def main(args) -> int:
    from envdoctor.commands.interpreter import resolve, run_python
    run_python(args)
    system, ctx = resolve(args)
    return run_merge(args, system, ctx)
