"""Next-token loss of a causal LM on held-out token chunks (the run's heldout.json)."""

from __future__ import annotations

import torch


def loss_and_logits(model, chunks: list[list[int]], device: str, keep_logits: bool = False):
    """(mean loss per predicted token, the logits of every chunk concatenated on the CPU or None)."""
    kept, total, n = [], 0.0, 0
    with torch.no_grad():
        for ids in chunks:
            x = torch.tensor([ids], device=device)
            logits = model(input_ids=x).logits.float()
            total += float(torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:], reduction="sum"))
            n += x.shape[1] - 1
            if keep_logits:
                kept.append(logits[0].cpu())
    return total / max(n, 1), (torch.cat(kept) if kept else None)
