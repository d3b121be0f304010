#!/usr/bin/env python3
"""Merge a trained LoRA adapter into its base model: a full bf16 model ready for vLLM.

    python train/merge.py --base BASE_DIR --adapter ADAPTER_DIR --out OUT_DIR [--from-nf4] [--device D]

Never into 4-bit weights: the base's own bf16 tensors are read one at a time (no full model in memory),
LoRA deltas added in fp32 (on the GPU when there is one), written as sharded safetensors with the dtype
in config.json, then tokenizer, chat template and generation_config (envdoctor_runner/merge_pipeline.py:
reads ahead, merges, writes shards in parallel, one fsync per shard at the end). `envdoctor merge RUN_DIR` runs
this into OUT_DIR.unverified, then train/verify.py, and renames the folder to OUT_DIR only when the
verification passed (with envdoctor-merge.json, its record); run alone, this script's output is unverified.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from envdoctor_runner import atomic, lora_merge, merge_pipeline, safetensors_stream as sts  # noqa: E402

WRITE_FAILED = 4  # the merged model could not be written (a full disk): nothing is left under its name

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt")


def nf4_round_trip(device: str):
    import bitsandbytes.functional as F

    def dequantize(w: torch.Tensor) -> torch.Tensor:
        q, state = F.quantize_4bit(w.to(device, torch.bfloat16), quant_type="nf4", compress_statistics=True)
        return F.dequantize_4bit(q, state).to(w.dtype)
    return dequantize


def shards(names: list[str], specs: dict, max_bytes: int) -> list[list[str]]:
    out, cur, size = [], [], 0
    for n in names:
        dtype, shape = specs[n]
        b = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        if cur and size + b > max_bytes:
            out.append(cur)
            cur, size = [], 0
        cur.append(n)
        size += b
    return out + ([cur] if cur else [])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--from-nf4", action="store_true", help="merge into the NF4-dequantized base weights")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-shard-gb", type=float, default=5.0)
    ap.add_argument("--readers", type=int, default=2, help="threads reading base tensors ahead")
    ap.add_argument("--writers", type=int, default=4, help="threads writing output tensors")
    ap.add_argument("--no-early-writeback", action="store_true",
                    help="leave the writeback of the output to the kernel until the final fsync")
    ap.add_argument("--inflight-mb", type=float, default=None,
                    help="host memory for tensors in flight (default: the largest tensor, or 1/8 of the model up "
                         "to 768 MiB)")
    ap.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"), default="auto",
                    help="dtype of the merged floating-point weights (auto: the base's)")
    args = ap.parse_args()
    base, adapter, out = Path(args.base), Path(args.adapter), Path(args.out)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    started = time.time()
    merge_pipeline.large_buffers_to_mmap()
    sts.EARLY_WRITEBACK = sts.EARLY_WRITEBACK and not args.no_early_writeback
    files = sts.weight_files(base)
    heads = {f: sts.header(f) for f in set(files.values())}
    specs = {n: (sts.DTYPES[heads[f][0][n]["dtype"]], heads[f][0][n]["shape"]) for n, f in files.items()}
    if args.dtype != "auto":
        specs = {n: (getattr(torch, args.dtype) if d.is_floating_point else d, shape) for n, (d, shape) in specs.items()}
    source = {}  # output tensor → the base tensor it is read from, where the names differ
    try:
        tied = json.loads((base / "config.json").read_text()).get("tie_word_embeddings") is True
    except (OSError, ValueError, AttributeError) as exc:  # missing, not JSON, not an object
        print(f"error: {base / 'config.json'}: cannot read the base's config ({exc})", file=sys.stderr)
        return 2
    try:
        acfg, tensors = lora_merge.load_adapter(adapter, device)
        lora, replaced, unmatched = lora_merge.plan(acfg, tensors, set(files), tied=tied)
        embed = lora_merge.untied_head(replaced, {n: s for n, (_, s) in specs.items()}) if tied else None
    except (lora_merge.AdapterError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if unmatched:
        print(f"error: {len(unmatched)} adapter tensors match no base weight (another base model?): "
              f"{unmatched[:3]}", file=sys.stderr)
        return 2
    head = lora_merge.HEAD
    if embed and head not in files:  # the untied head: the adapter's copy, or the embedding as the base has it
        files[head], specs[head] = files[embed], specs[embed]
        if head not in replaced:
            source[head] = embed
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    out_bytes = sum(torch.Size(shape).numel() * torch.empty((), dtype=d).element_size() for d, shape in specs.values())
    free = atomic.free_bytes(out.parent)
    small = sum((d / n).stat().st_size for d in (adapter, base) for n in TOKENIZER_FILES if (d / n).is_file())
    if free is not None and free < out_bytes + small + (1 << 20):  # + tokenizer files, config, reports
        print(f"error: cannot write the merged model to {out}: it needs {atomic.human(out_bytes)}, "
              f"{atomic.human(free)} free there. Free space, or merge to another disk (--out DIR)", file=sys.stderr)
        return WRITE_FAILED
    tmp.mkdir(parents=True)
    try:
        return _write(args, base, adapter, out, tmp, files, heads, specs, acfg, lora, replaced, device, started,
                      source, untied=embed is not None)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # no partial model left, and its space given back
        if atomic.write_errno(exc) is None:
            raise
        failed = atomic.WriteFailed(out, exc, out_bytes)
        print(f"error: {failed.line('the merged model to ' + str(out))}. Free space there, or merge to another "
              "disk (--out DIR)", file=sys.stderr)
        return WRITE_FAILED


def _write(args, base: Path, adapter: Path, out: Path, tmp: Path, files, heads, specs, acfg, lora, replaced,
           device: str, started: float, source: dict, untied: bool) -> int:
    """The merged model into `tmp`, then renamed to `out` (atomic.publish) once complete and synced."""
    dequantize = nf4_round_trip(device) if args.from_nf4 else None
    linear_names = {n for n in files if n.endswith(".weight") and "layers." in n and len(specs[n][1]) == 2}
    order = sorted(files)
    groups = shards(order, specs, int(args.max_shard_gb * 1e9))
    weight_map, writers, tasks = {}, [], []

    def nbytes(n: str) -> int:
        numel = torch.Size(specs[n][1]).numel()
        src = sts.DTYPES[heads[files[n]][0][source.get(n, n)]["dtype"]] if n not in replaced else replaced[n].dtype
        return numel * max(torch.empty((), dtype=src).element_size(), torch.empty((), dtype=specs[n][0]).element_size())

    for i, group in enumerate(groups, 1):
        fname = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        writers.append(sts.ShardWriter(tmp / fname, [(n, specs[n][0], specs[n][1]) for n in group]))
        for n in group:
            weight_map[n] = fname
            tasks.append(merge_pipeline.Task(n, i - 1, nbytes(n), reads=n not in replaced))
    fds = {f: os.open(f, os.O_RDONLY) for f in heads}

    def read(task: merge_pipeline.Task) -> torch.Tensor:
        n = task.name
        if n in replaced:
            return replaced[n]
        return sts.read_at(fds[files[n]], files[n], source.get(n, n), *heads[files[n]])

    def merge(task: merge_pipeline.Task, t: torch.Tensor) -> torch.Tensor:
        n = task.name
        t = t.to(specs[n][0])
        if n in replaced:
            return t
        if n in lora:
            return lora_merge.merged(t, lora[n]["A"], lora[n]["B"], acfg, device, dequantize)
        if dequantize is not None and n in linear_names:
            return dequantize(t.to(device)).cpu()  # what 4-bit training saw, also where no adapter sits
        return t

    model_bytes = sum(t.nbytes for t in tasks)
    budget = int(args.inflight_mb * 2**20) if args.inflight_mb else \
        max(max(t.nbytes for t in tasks), min(768 * 2**20, model_bytes // 8))
    try:
        timings = merge_pipeline.run(tasks, read, merge, writers, budget, readers=args.readers,
                                     write_threads=args.writers)
    except merge_pipeline.PipelineError as exc:
        if atomic.write_errno(exc) is not None:
            raise  # a write error: main() words it and removes the partial folder
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for fd in fds.values():
            os.close(fd)
    total = sum(w.path.stat().st_size for w in writers)
    (tmp / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config = json.loads((base / "config.json").read_text())
    dtypes = {str(d).removeprefix("torch.") for d, _ in specs.values() if d.is_floating_point}
    if untied:  # lm_head.weight written apart: transformers and vLLM must not tie it to the embedding again
        config["tie_word_embeddings"] = False
    config["dtype"] = config["torch_dtype"] = "bfloat16" if "bfloat16" in dtypes else sorted(dtypes)[0]
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    if (base / "generation_config.json").exists():
        shutil.copy2(base / "generation_config.json", tmp / "generation_config.json")
    else:
        (tmp / "generation_config.json").write_text(json.dumps(
            {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}, indent=2))
    tok_src = adapter if (adapter / "tokenizer_config.json").exists() else base
    for name in TOKENIZER_FILES:
        if (tok_src / name).exists():
            shutil.copy2(tok_src / name, tmp / name)
    if not any((tmp / n).exists() for n in ("chat_template.jinja", "chat_template.json")) and \
            (base / "chat_template.jinja").exists():
        shutil.copy2(base / "chat_template.jinja", tmp / "chat_template.jinja")
    summary = {"base": str(base.resolve()), "adapter": str(adapter.resolve()), "from_nf4": args.from_nf4,
               "dtype": config["dtype"],
               "device": device, "lora_merged": len(lora), "replaced": sorted(replaced),
               "untied_lm_head": untied, "shards": len(groups),
               "bytes": total, "seconds": round(time.time() - started, 2), "pipeline": timings.to_dict()}
    (tmp / "merge_report.json").write_text(json.dumps(summary, indent=2))
    atomic.fsync_tree(tmp)  # the shards are synced already; the small files and the folder too
    atomic.publish(tmp, out)  # an earlier merge at `out` is removed only once this one holds the name
    print(json.dumps(summary), flush=True)
    return 0


def _stop(signum, _frame):
    """Ctrl-C (envdoctor merge's, to the process group) or SIGTERM: once, then ignored while main() removes
    the partial folder (a model's size) on its way out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _stopped.append(signum)
    raise KeyboardInterrupt


_stopped: list[int] = []

if __name__ == "__main__":
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        code = main()
    except KeyboardInterrupt:
        signum = _stopped[0] if _stopped else signal.SIGINT
        print(f"{'interrupted' if signum == signal.SIGINT else 'stopped by ' + signal.Signals(signum).name}: "
              "no merged model was written (nothing partial is left); run the same command again", file=sys.stderr,
              flush=True)
        code = 128 + int(signum)
    raise SystemExit(code)
