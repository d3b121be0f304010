"""Causal-LM loss without materialising the whole logits tensor.

For a 128k vocabulary, 2 × 2048 tokens make 0.5 G logits: 1 GiB in bf16, 2 GiB more as fp32 for the
softmax, and as much again for its gradient. Here the lm_head and the cross-entropy run on chunks of
tokens, so the peak holds one chunk's logits, not all of them: for a plain linear head in one pass that makes
the gradients as it goes (head_loss.py); for any other head (LoRA on lm_head, a head FSDP gathers) under
activation checkpointing, a chunk's logits existing only while that chunk is computed (and recomputed in
backward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from envdoctor_runner.head_loss import head_cross_entropy, plain_head


def _chunk_loss(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module) -> torch.Tensor:
    if hidden.dtype in (torch.bfloat16, torch.float16) and head.weight.dtype == torch.float32:
        # A trained fp32 lm_head (modules_to_save): its matmul in the stream's dtype, as under autocast.
        # In fp32 the 128k-vocabulary head was ~4 GFLOP per token without tensor cores; the weight and its
        # gradient stay fp32 (the cast's backward returns fp32).
        with torch.autocast(hidden.device.type, dtype=hidden.dtype):
            logits = head(hidden)
        logits = logits.float()
    else:
        logits = head(hidden.to(head.weight.dtype)).float()
    return F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")


def chunked_cross_entropy(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module,
                          chunk: int = 1024) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens (labels -100 are ignored), as
    `LlamaForCausalLM(labels=...)` computes it."""
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    y = labels[:, 1:].reshape(-1)
    plain = plain_head(head) if torch.is_grad_enabled() else None
    if plain is not None:
        return head_cross_entropy(h, y, plain, chunk)
    return checkpointed_cross_entropy(h, y, head, chunk)


def checkpointed_cross_entropy(h: torch.Tensor, y: torch.Tensor, head: torch.nn.Module, chunk: int) -> torch.Tensor:
    """The same over flat hidden states (N, H) and labels (N,), through any head module: each chunk under
    activation checkpointing (without gradients, plainly)."""
    count = (y != -100).sum().clamp(min=1)
    total = h.new_zeros((), dtype=torch.float32)
    for i in range(0, h.shape[0], chunk):
        piece = (h[i:i + chunk], y[i:i + chunk], head)
        total = total + (checkpoint(_chunk_loss, *piece, use_reentrant=False) if torch.is_grad_enabled()
                         else _chunk_loss(*piece))
    return total / count


class CausalLMLoss(torch.nn.Module):
    """Wraps a peft model so that one forward returns the loss; this is what DDP wraps.

    dtype: the run's weight dtype. bf16: the decoder runs under bf16 autocast, so the fp32 LoRA weights
    multiply in bf16 on tensor cores as the base does (peft otherwise casts each layer's input to fp32 for
    them: seven fp32 matmuls and fp32 copies of the input per layer, three times per step with
    checkpointing), and what LoRA saves for backward is bf16. The weights, their gradients and the
    optimizer stay fp32; the loss is computed in fp32 (chunked_cross_entropy)."""

    def __init__(self, peft_model, chunk: int = 1024, dtype=None):
        super().__init__()
        self.peft_model = peft_model
        self.chunk = chunk
        self.autocast = dtype if dtype in (torch.bfloat16,) else None
        if self.autocast is not None:
            from peft.tuners.lora import LoraLayer
            # Under autocast the input keeps its dtype (peft's own switch): the decoder's layers only. A
            # LoRA lm_head (lora_target_modules may name it) runs in the chunked loss, outside autocast:
            # it keeps peft's cast of the bf16 hidden state to its fp32 weights.
            for m in peft_model.get_base_model().model.modules():
                if isinstance(m, LoraLayer):
                    m.cast_input_dtype_enabled = False

    def forward(self, input_ids, attention_mask, labels):
        base = self.peft_model.get_base_model()
        if self.autocast is None:
            hidden = base.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        else:
            with torch.autocast(input_ids.device.type, dtype=self.autocast):
                hidden = base.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return chunked_cross_entropy(hidden, labels, base.lm_head, self.chunk)
