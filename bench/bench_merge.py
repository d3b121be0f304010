#!/usr/bin/env python3
"""Merge benchmark: train/merge.py (the pipelined, tensor-by-tensor merge) against the plain PEFT path
(AutoModelForCausalLM.from_pretrained in bf16, PeftModel.from_pretrained, merge_and_unload,
save_pretrained), each in its own process, alternating (ours first in odd rounds, PEFT first in even ones),
in one call: wall time and peak host memory (the child's max RSS from wait4). Neither is verified while
timed; the verification (train/verify.py on the first merge of ours) is timed apart. Also measured in the
same call: the disk's own rate, a plain copy of the largest base shard with fsync (what a merge cannot beat).

    python bench/bench_merge.py --shape tiny            (CPU: proves the bench and the pipeline, ~1 min)
    python bench/bench_merge.py --shape 8b --workdir /tmp/mb   (GPU box: the Llama-3.1-8B shape, random
                                                        bf16 weights and an r=64 adapter on all seven projections)

The base and the adapter are built here (random values, no download) by a child process, on the GPU when
there is one; this process never imports torch, so the children's ru_maxrss is theirs alone. Outputs are
deleted after each run (the 8B shape: 16 GB base + 16 GB per merged model). Prints one JSON line per run,
then a summary line with the ratios; --json-out also writes everything there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {  # hidden, intermediate, layers, heads, kv heads, vocab, shard GB, rank
    "tiny": (256, 688, 4, 4, 2, 4096, 0.004, 8),
    "small": (1024, 3584, 8, 8, 2, 32000, 0.3, 16),
    "8b": (4096, 14336, 32, 32, 8, 128256, 5.0, 64),
}
PROJS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
         "mlp.up_proj", "mlp.down_proj")
PLAIN = """
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base, adapter, out, device = sys.argv[1:5]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
model.save_pretrained(out)
"""
BUILD = """
import json, sys, torch
from pathlib import Path
from safetensors.torch import save_file
h, inter, layers, heads, kv, vocab, shard_gb, rank = json.loads(sys.argv[1])
base, adapter = Path(sys.argv[2]), Path(sys.argv[3])
projs = json.loads(sys.argv[4])
dev = "cuda" if torch.cuda.is_available() else "cpu"
g = torch.Generator(device=dev).manual_seed(0)
hd = h // heads
shapes = {"model.embed_tokens.weight": (vocab, h)}
io = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv * hd, h), "self_attn.v_proj": (kv * hd, h),
      "self_attn.o_proj": (h, h), "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h), "mlp.down_proj": (h, inter)}
for i in range(layers):
    shapes[f"model.layers.{i}.input_layernorm.weight"] = (h,)
    for p in projs:
        shapes[f"model.layers.{i}.{p}.weight"] = io[p]
    shapes[f"model.layers.{i}.post_attention_layernorm.weight"] = (h,)
shapes["model.norm.weight"] = (h,)
shapes["lm_head.weight"] = (vocab, h)
base.mkdir(parents=True); adapter.mkdir(parents=True)
index, shard, size, n, names = {}, {}, 0, 0, list(shapes)
def flush():
    global shard, size, n
    n += 1
    save_file(shard, str(base / f"model-{n:05d}.safetensors"), metadata={"format": "pt"})
    index.update({k: f"model-{n:05d}.safetensors" for k in shard})
    shard, size = {}, 0
for name in names:
    shape = shapes[name]
    if len(shape) == 1:
        t = torch.ones(shape, dtype=torch.bfloat16)
    else:
        t = (torch.randn(shape, generator=g, device=dev, dtype=torch.bfloat16) * 0.02).cpu()
    if shard and size + t.numel() * 2 > shard_gb * 1e9:
        flush()
    shard[name] = t
    size += t.numel() * 2
flush()
(base / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
(base / "config.json").write_text(json.dumps({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h, "intermediate_size": inter,
    "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": vocab,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False,
    "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "dtype": "bfloat16"}))
lora = {}
for name, shape in shapes.items():
    if ".layers." in name and len(shape) == 2:
        stem = "base_model.model." + name[:-len(".weight")]
        lora[f"{stem}.lora_A.weight"] = (torch.randn(rank, shape[1], generator=g, device=dev) * 0.01).cpu()
        lora[f"{stem}.lora_B.weight"] = (torch.randn(shape[0], rank, generator=g, device=dev) * 0.01).cpu()
save_file(lora, str(adapter / "adapter_model.safetensors"), metadata={"format": "pt"})
(adapter / "adapter_config.json").write_text(json.dumps({
    "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0,
    "target_modules": [p.split(".")[-1] for p in projs], "bias": "none", "fan_in_fan_out": False,
    "base_model_name_or_path": str(base), "inference_mode": True}))
g2 = torch.Generator().manual_seed(1)
seq = 256
(base.parent / "heldout.json").write_text(json.dumps({"sequence_len": seq, "chunks": [
    torch.randint(3, vocab, (seq,), generator=g2).tolist() for _ in range(4)]}))
print(json.dumps({"tensors": len(shapes), "shards": n, "lora_layers": len(lora) // 2}))
"""


def measure(argv: list[str], env: dict | None = None) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code:
        print(output[-3000:], file=sys.stderr)
    return {"exit": code, "seconds": round(took, 2), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3),
            "output": output}


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def fsync_folder(path: Path) -> float:
    """fsync every file of a finished output (what PEFT's save_pretrained leaves to the kernel): seconds."""
    start = time.perf_counter()
    for p in path.iterdir():
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    return time.perf_counter() - start


def disk_rate(src: Path, dst: Path) -> dict:
    """A plain copy of one shard, 16 MiB at a time, then fsync: the disk's own read + write rate."""
    size, block = src.stat().st_size, 16 << 20
    buf = bytearray(block)
    view = memoryview(buf)
    start = time.perf_counter()
    with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        while True:
            n = fin.readinto(buf)
            if not n:
                break
            fout.write(view[:n])
        copied = time.perf_counter() - start
        os.fsync(fout.fileno())
    took = time.perf_counter() - start
    dst.unlink()
    return {"bytes": size, "seconds": round(took, 3), "gb_per_s": round(size / took / 1e9, 3),
            "before_fsync_s": round(copied, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--workdir", default=None, help="where base, adapter and outputs go (default: a temp folder)")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (each runs both paths once)")
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep base and adapter afterwards")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--budget-s", type=float, default=420,
                    help="variants start only before this many seconds have passed (the device call's limit)")
    ap.add_argument("--merge-args", default="", help="extra arguments for train/merge.py (e.g. '--writers 8')")
    ap.add_argument("--variant", action="append", default=[],
                    help="after the rounds, one more run of train/merge.py with these extra arguments (repeatable), "
                         "written --variant='--no-early-writeback' (with '=': the value starts with a dash)")
    args = ap.parse_args()
    import tempfile
    work = Path(args.workdir or tempfile.mkdtemp(prefix="envdoctor-bench-merge-"))
    base, adapter = work / "base", work / "adapter"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    results: dict = {"shape": args.shape, "rounds": []}
    began = time.perf_counter()
    try:
        if not (base / "config.json").is_file():
            shutil.rmtree(work / "base", ignore_errors=True)
            shutil.rmtree(work / "adapter", ignore_errors=True)
            t0 = time.perf_counter()
            built = subprocess.run([args.python, "-c", BUILD, json.dumps(SHAPES[args.shape]), str(base), str(adapter),
                                    json.dumps(PROJS)], capture_output=True, text=True, env=env)
            if built.returncode:
                print(built.stdout[-2000:] + built.stderr[-3000:], file=sys.stderr)
                return 1
            results["build"] = {**json.loads(built.stdout.strip().splitlines()[-1]),
                                "seconds": round(time.perf_counter() - t0, 1)}
            print(json.dumps({"build": results["build"]}), flush=True)
        size = folder_bytes(base)
        results["model_gb"] = round(size / 1e9, 3)
        largest = max(base.glob("*.safetensors"), key=lambda p: p.stat().st_size)
        results["disk"] = disk_rate(largest, work / "disk-test.bin")
        print(json.dumps({"disk copy + fsync": results["disk"]}), flush=True)
        ours_out, peft_out = work / "ours", work / "peft"
        ours_argv = [args.python, str(ROOT / "train" / "merge.py"), "--base", str(base), "--adapter", str(adapter),
                     "--out", str(ours_out), "--device", args.device] + args.merge_args.split()
        peft_argv = [args.python, "-c", PLAIN, str(base), str(adapter), str(peft_out), args.device]
        for r in range(args.rounds):
            order = ("ours", "peft") if r % 2 == 0 else ("peft", "ours")
            row: dict = {}
            for name in order:
                m = measure(ours_argv if name == "ours" else peft_argv, env)
                out_dir = ours_out if name == "ours" else peft_out
                output = m.pop("output")
                if m["exit"]:
                    print(f"{name} failed (exit {m['exit']})", file=sys.stderr)
                    return 1
                m["output_gb"] = round(folder_bytes(out_dir) / 1e9, 3)
                if name == "ours":
                    report = json.loads((out_dir / "merge_report.json").read_text())
                    m["pipeline"] = report.get("pipeline")
                    m["device"] = report.get("device")
                    if r == 0 and not args.no_verify:
                        row["verify"] = verify(args, base, adapter, out_dir, work, env)
                else:  # save_pretrained does not fsync: what flushing its output afterwards costs, apart
                    m["fsync_after_s"] = round(fsync_folder(out_dir), 2)
                row[name] = m
                print(json.dumps({f"round {r + 1}: {name}": m}), flush=True)
                del output
                shutil.rmtree(out_dir, ignore_errors=True)
            results["rounds"].append(row)
        results["variants"] = {}
        for extra in args.variant:
            if time.perf_counter() - began > args.budget_s:
                print(json.dumps({f"variant {extra}": f"skipped: past --budget-s {args.budget_s:g}"}), flush=True)
                continue
            m = measure(ours_argv + extra.split(), env)
            m.pop("output")
            if not m["exit"]:
                m["pipeline"] = json.loads((ours_out / "merge_report.json").read_text()).get("pipeline")
            results["variants"][extra] = m
            print(json.dumps({f"variant {extra}": m}), flush=True)
            shutil.rmtree(ours_out, ignore_errors=True)
        summary(results)
    finally:
        if not args.keep:
            shutil.rmtree(work / "base", ignore_errors=True)
            shutil.rmtree(work / "adapter", ignore_errors=True)
            (work / "heldout.json").unlink(missing_ok=True)
            if not args.workdir:
                shutil.rmtree(work, ignore_errors=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


def verify(args, base: Path, adapter: Path, merged: Path, work: Path, env: dict) -> dict:
    m = measure([args.python, str(ROOT / "train" / "verify.py"), "--base", str(base), "--adapter", str(adapter),
                 "--merged", str(merged), "--heldout", str(work / "heldout.json"), "--device", args.device], env)
    lines = [ln for ln in m.pop("output").splitlines() if ln.startswith("{")]
    report = json.loads(lines[-1]) if lines else {}
    out = {**m, **{k: report.get(k) for k in ("passed", "max_abs_diff", "mean_abs_diff", "loss_adapter",
                                               "loss_merged", "argmax_agreement", "device")}}
    print(json.dumps({"verify (timed apart)": out}), flush=True)
    return out


def summary(results: dict) -> None:
    import statistics
    ours = [r["ours"] for r in results["rounds"]]
    peft = [r["peft"] for r in results["rounds"]]
    t_ours = statistics.median(o["seconds"] for o in ours)
    t_peft = statistics.median(p["seconds"] for p in peft)
    rss_ours = max(o["peak_rss_gib"] for o in ours)
    rss_peft = max(p["peak_rss_gib"] for p in peft)
    pipe = ours[-1].get("pipeline") or {}
    moved = results["model_gb"] * 2  # read once, written once
    disk = results["disk"]["gb_per_s"]
    floor = moved / 2 / max(disk, 1e-9)
    out = {"model_gb": results["model_gb"], "ours_s": round(t_ours, 2), "peft_s": round(t_peft, 2),
           "time_ratio_ours_over_peft": round(t_ours / max(t_peft, 1e-9), 3),
           "ours_peak_rss_gib": rss_ours, "peft_peak_rss_gib": rss_peft,
           "rss_ratio_ours_over_peft": round(rss_ours / max(rss_peft, 1e-9), 3),
           "peft_fsync_after_s": round(statistics.median(p["fsync_after_s"] for p in peft), 2),
           "ours_breakdown_s": {k: pipe.get(k) for k in ("read_s", "merge_s", "write_s", "sync_s", "wall_s",
                                                        "merge_waited_s")},
           "disk_copy_gb_per_s": disk,
           # the copy moves each byte once in and once out, like the merge: its time for the model's bytes
           "disk_floor_s": round(floor, 2),
           "ours_over_disk_floor": round(t_ours / max(floor, 1e-9), 2),
           # the pipeline alone (no interpreter start, torch import, CUDA init, adapter load)
           "pipeline_over_disk_floor": round((pipe.get("wall_s") or 0) / max(floor, 1e-9), 2)}
    verify = results["rounds"][0].get("verify")
    if verify:
        out["verify_s"] = verify["seconds"]
        out["verify_passed"] = verify.get("passed")
    results["summary"] = out
    print(json.dumps({"summary": out}), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
