#!/usr/bin/env python3
"""The runner's one-pass lm_head + cross-entropy (train/envdoctor_runner/head_loss.py) against the checkpointed
chunks it replaced (loss.checkpointed_cross_entropy), on a GPU at Llama-3 sizes: loss and gradients compared,
the time of forward + backward and the allocated / reserved peaks of each, measured in the same process.
One JSON line per case.

    python bench/head_loss_check.py [--device cuda] [--tokens 4095] [--hidden 3072] [--vocab 128256]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "train"))


def run(fn, hidden, labels, head, chunk, device, repeats):
    import torch
    took = []
    for _ in range(repeats):
        hidden.grad, head.weight.grad = None, None
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() if device.startswith("cuda") else 0
        start = time.perf_counter()
        loss = fn(hidden, labels, head, chunk)
        loss.backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        took.append(time.perf_counter() - start)
    peak = {}
    if device.startswith("cuda"):
        peak = dict(peak_allocated_gib=round((torch.cuda.max_memory_allocated() - before) / 2**30, 3),
                    peak_reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 3))
    return loss.detach(), hidden.grad.clone(), (head.weight.grad.clone() if head.weight.grad is not None else None), \
        dict(ms=round(1000 * min(took), 2), **peak)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tokens", type=int, default=4095)
    ap.add_argument("--hidden", type=int, default=3072)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    import torch
    from envdoctor_runner.head_loss import head_cross_entropy
    from envdoctor_runner.loss import checkpointed_cross_entropy
    g = torch.Generator(device=args.device).manual_seed(0)
    for weight_dtype, trained in ((torch.float32, True), (torch.bfloat16, True), (torch.bfloat16, False)):
        head = torch.nn.Linear(args.hidden, args.vocab, bias=False, device=args.device, dtype=weight_dtype)
        head.weight.data.normal_(0, 0.02, generator=g)
        head.weight.requires_grad_(trained)
        hidden = torch.randn(args.tokens, args.hidden, device=args.device, generator=g).to(torch.bfloat16)
        hidden.requires_grad_(True)
        labels = torch.randint(0, args.vocab, (args.tokens,), device=args.device, generator=g)
        labels[: args.tokens // 10] = -100
        one = run(head_cross_entropy, hidden, labels, head, args.chunk, args.device, args.repeats)
        ref = run(checkpointed_cross_entropy, hidden, labels, head, args.chunk, args.device, args.repeats)

        def rel(a, b):
            return None if a is None else float((a.float() - b.float()).norm() / b.float().norm())
        print(json.dumps(dict(weight=str(weight_dtype).split(".")[1], trained=trained, tokens=args.tokens,
                              hidden=args.hidden, vocab=args.vocab, chunk=args.chunk,
                              loss=float(one[0]), loss_reference=float(ref[0]),
                              grad_hidden_rel_diff=rel(one[1], ref[1]), grad_weight_rel_diff=rel(one[2], ref[2]),
                              one_pass=one[3], checkpointed=ref[3])), flush=True)
        del head, hidden, labels, one, ref
    return 0


if __name__ == "__main__":
    sys.exit(main())
