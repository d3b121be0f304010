#!/usr/bin/env python3
"""Prove a merge: logits of base + adapter (unmerged, through peft) against the merged model on held-out
token chunks of the run; max and mean absolute difference and the held-out loss of both.

    python train/verify.py --base BASE --adapter ADAPTER --merged MERGED --heldout RUN/heldout.json

Tolerance (documented in README "Merging"): the merge passes when the held-out losses differ by at most
1 % and the merged logits' mean absolute difference from base + adapter is at most 1 % of the mean
absolute logit or at most 10 % of what the adapter itself changes (base + adapter against the base
alone). fp32 merges are exact to ~1e-6. A bf16 merge rounds W + B·A to bf16: where the adapter's
deltas are small next to the bf16 spacing of W (few or gentle training steps), part of the adapter is
rounded away — that is a real loss, reported as a failure with its remedy (--dtype float32, or serve
base + adapter). The models are loaded one after the other, on the GPU when one fits.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from envdoctor_runner.heldout import loss_and_logits  # noqa: E402

LOSS_REL_TOL = 0.01
LOGIT_REL_TOL = 0.01
EFFECT_REL_TOL = 0.10


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--merged", required=True)
    ap.add_argument("--heldout", required=True)
    ap.add_argument("--tokens", type=int, default=2048, help="held-out tokens compared (logits kept on the CPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--report", help="also write the result here (JSON)")
    args = ap.parse_args()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    device = args.device
    if device == "auto":  # the GPU when one model fits in its free memory (they are loaded one at a time)
        size = sum(p.stat().st_size for p in Path(args.merged).glob("*.safetensors"))
        device = "cuda" if torch.cuda.is_available() and torch.cuda.mem_get_info()[0] > 1.3 * size else "cpu"
    chunks, budget = [], args.tokens
    for c in json.loads(Path(args.heldout).read_text())["chunks"]:
        if budget <= 1:
            break
        chunks.append(c[:budget])
        budget -= len(chunks[-1])
    if not chunks:
        print(json.dumps({"error": f"{args.heldout}: no held-out chunks"}))
        return 2
    dtype = json.loads((Path(args.merged) / "config.json").read_text()).get("dtype", "bfloat16")
    dtype = getattr(torch, dtype)
    # Straight onto the device (device_map): not the whole model in host memory first.
    place = {"dtype": dtype, "device_map": {"": device}} if device == "cuda" else {"dtype": dtype}
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(args.base, **place), args.adapter).eval()
    ref_loss, ref_logits = loss_and_logits(ref, chunks, device, keep_logits=True)
    with ref.disable_adapter():
        base_loss, base_logits = loss_and_logits(ref, chunks, device, keep_logits=True)
    effect = float((ref_logits - base_logits).abs().mean())
    del ref, base_logits
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    merged = AutoModelForCausalLM.from_pretrained(args.merged, **place).eval()
    m_loss, m_logits = loss_and_logits(merged, chunks, device, keep_logits=True)
    diff = (ref_logits - m_logits).abs()
    scale = float(ref_logits.abs().mean())
    result = {"tokens": int(ref_logits.shape[0]), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
              "mean_abs_logit": scale, "adapter_effect": effect, "loss_base": base_loss,
              "loss_adapter": ref_loss, "loss_merged": m_loss,
              "argmax_agreement": float((ref_logits.argmax(-1) == m_logits.argmax(-1)).float().mean()),
              "tolerance": {"loss_rel": LOSS_REL_TOL, "mean_abs_diff_rel": LOGIT_REL_TOL,
                            "mean_abs_diff_of_adapter_effect": EFFECT_REL_TOL}, "device": device}
    result["passed"] = (abs(m_loss - ref_loss) <= LOSS_REL_TOL * abs(ref_loss)
                        and (result["mean_abs_diff"] <= LOGIT_REL_TOL * scale
                             or result["mean_abs_diff"] <= EFFECT_REL_TOL * effect))
    print(json.dumps(result), flush=True)
    if args.report:
        Path(args.report).write_text(json.dumps(result, indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
