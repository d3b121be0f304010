#!/usr/bin/env python3
"""Style-transfer evaluation: the base and the merged model continue the same prompts; each one's text
is scored against the run's corpus (envdoctor_runner/style.py), and each one's perplexity is measured on the run's
held-out chunks.

    python train/eval.py --run RUN_DIR --merged MERGED_DIR [--prompts FILE] [--max-new-tokens 48]

Prompts: FILE (one per line, or jsonl with "prompt"), else the first 12 tokens of held-out chunks.
Generation is sampled (temperature 0.8, top-p 0.95) with the same seed for both models.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from envdoctor_runner import config, data, style  # noqa: E402
from envdoctor_runner.heldout import loss_and_logits  # noqa: E402


def generate(model, tokenizer, prompts, device, max_new, seed) -> list[str]:
    out = []
    for i, p in enumerate(prompts):
        torch.manual_seed(seed + i)
        ids = tokenizer(p, return_tensors="pt").input_ids.to(device)
        with torch.no_grad():
            g = model.generate(ids, max_new_tokens=max_new, do_sample=True, temperature=0.8, top_p=0.95,
                               pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        out.append(tokenizer.decode(g[0, ids.shape[1]:], skip_special_tokens=True))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--merged", required=True)
    ap.add_argument("--base")
    ap.add_argument("--prompts")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    run = Path(args.run)
    cfg = config.load(run / "config.resolved.json")
    summary = json.loads((run / "run_summary.json").read_text())
    try:  # the style score compares with the corpus the run trained on
        corpus = data.read_documents([d["path"] for d in cfg["datasets"]], Path(cfg["config_dir"]))
    except data.corpus.CorpusError as exc:
        print("error: the run's datasets cannot be read any more (the style score needs them):\n"
              + "\n".join(f"  {p}" for p in exc.problems), flush=True)
        return 2
    held = json.loads((run / "heldout.json").read_text())
    heldout, source = held["chunks"], held.get("source", "validation")
    tokenizer = AutoTokenizer.from_pretrained(args.merged)
    if args.prompts:
        lines = [x for x in Path(args.prompts).read_text(encoding="utf-8").splitlines() if x.strip()]
        prompts = [json.loads(x)["prompt"] if x.lstrip().startswith("{") else x for x in lines]
    else:
        prompts = [tokenizer.decode(c[:12], skip_special_tokens=True) for c in heldout[:args.samples]]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base_dir = args.base or summary.get("base_model_path") or summary.get("base_model")
    results = {}
    for name, path in (("base", base_dir), ("merged", args.merged)):
        dtype = json.loads((Path(path) / "config.json").read_text()).get("dtype") or "bfloat16"
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype),
                                                     device_map={"": device} if device == "cuda" else None).eval()
        texts = generate(model, tokenizer, prompts, device, args.max_new_tokens, args.seed)
        results[name] = {**style.score(texts, corpus), "perplexity": math.exp(loss_and_logits(model, heldout[:8], device)[0]),
                         "samples": texts[:3]}
        del model
        gc.collect()
    report = {"prompts": len(prompts), "corpus_documents": len(corpus), "perplexity_on": source, **results,
              "closer_to_corpus": "merged" if results["merged"]["style_score"] > results["base"]["style_score"] else "base"}
    print(f"{'':<10} {'style':>6} {'vocab':>6} {'function':>8} {'sentences':>9} {'perplexity':>11}")
    for name in ("base", "merged"):
        r = results[name]
        print(f"{name:<10} {r['style_score']:>6.3f} {r['vocabulary']:>6.3f} {r['function']:>8.3f} "
              f"{r['sentences']:>9.3f} {r['perplexity']:>11.2f}")
    print(f"closer to the corpus: {report['closer_to_corpus']}  (style score: mean of the three, 1 = the corpus)")
    if source != "validation":
        print("perplexity is on training chunks (the run had no validation split: val_set_size 0), so it "
              "flatters the merged model")
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
