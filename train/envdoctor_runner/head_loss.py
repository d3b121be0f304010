"""lm_head and cross-entropy in one pass: the gradients are made while the loss is computed.

The checkpointed chunks of loss.py compute each chunk's logits twice (forward, then again in backward) and,
for a trained lm_head, leave autograd to make a vocabulary × hidden gradient per chunk and add it to the
last one: a block of 0.5-2 GiB allocated and freed over and over in every step. Under expandable segments
that churn is what leaves the free range the allocator's reserve holds at the runner's peak, and its size
depends on the order of frees, not on the config (bench/results/README.md, allocator traces).

Here the buffers are allocated once per call, in one order, whatever the number of chunks: one chunk's
logits (the compute dtype and fp32), the head's gradient (accumulated chunk by chunk, in the weight's dtype)
and the hidden states' gradient; the softmax and its gradient are computed in place. Backward only scales
what forward made by the incoming gradient. Each chunk's logits are computed once, not twice.

Only for a plain bias-free nn.Linear head that nothing hooks (no LoRA on lm_head, not sharded by FSDP):
`plain_head` says which module that is; loss.py keeps the checkpointed chunks for the others.
"""

from __future__ import annotations

import torch

HALF = (torch.bfloat16, torch.float16)


def plain_head(head: torch.nn.Module) -> torch.nn.Linear | None:
    """The bias-free nn.Linear that computes `head`'s output (a modules_to_save wrapper's active copy), or
    None where anything else would run: LoRA on lm_head, hooks (FSDP's gathers), a disabled adapter."""
    module = head
    from peft.utils.other import ModulesToSaveWrapper
    if isinstance(module, ModulesToSaveWrapper):
        if module._forward_hooks or module._forward_pre_hooks:
            return None
        active = module.active_adapters
        if module.disable_adapters:  # peft's passthrough: the original module
            module = module.original_module
        elif len(active) == 1 and active[0] in module.modules_to_save:
            module = module.modules_to_save[active[0]]
        else:
            return None
    if type(module) is not torch.nn.Linear or module.bias is not None:
        return None
    if module._forward_hooks or module._forward_pre_hooks or type(module.weight) is not torch.nn.Parameter:
        return None
    return module


def compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The matmul's dtype: an fp32 (trained) weight on a half-precision stream multiplies in the stream's
    dtype, as autocast would; otherwise the weight's."""
    return hidden.dtype if hidden.dtype in HALF and weight.dtype == torch.float32 else weight.dtype


class HeadCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T` against `labels` (-100 ignored), over `chunk` rows at a time.
    hidden: (N, H); labels: (N,); weight: (V, H)."""

    @staticmethod
    def forward(ctx, hidden, labels, weight, chunk):
        dt = compute_dtype(hidden, weight)
        w = weight.detach().to(dt)  # a copy only for an fp32 weight on a half stream (freed when forward ends)
        h = hidden.detach()
        n, vocab = h.shape[0], w.shape[0]
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        valid = labels != -100
        count = valid.sum().clamp(min=1)
        target = labels.clamp(min=0)
        rows = min(chunk, n)
        logits = h.new_empty((rows, vocab), dtype=dt)
        probs = h.new_empty((rows, vocab), dtype=torch.float32)
        grad_h = torch.empty_like(h) if want_h else None
        grad_w = torch.zeros_like(weight) if want_w else None
        # the head's gradient in the weight's dtype: a chunk's product is added to it (through a buffer in
        # the compute dtype when that differs: an fp32 weight on a bf16 stream)
        product = grad_w.new_empty(grad_w.shape, dtype=dt) if want_w and dt != grad_w.dtype else None
        total = h.new_zeros((), dtype=torch.float32)
        for i in range(0, n, rows):
            x = h[i:i + rows].to(dt)
            m = x.shape[0]
            lg, p = logits[:m], probs[:m]
            torch.mm(x, w.t(), out=lg)
            p.copy_(lg)
            picked = p.gather(1, target[i:i + m, None]).squeeze(1)
            top = p.amax(dim=1, keepdim=True)
            p.sub_(top).exp_()
            norm = p.sum(dim=1, keepdim=True)
            lse = top.squeeze(1) + norm.squeeze(1).log()
            keep = valid[i:i + m]
            total += torch.where(keep, lse - picked, 0.0).sum()
            if not (want_h or want_w):
                continue
            # d(mean loss)/d(logits) = (softmax - one_hot(target)) / count on the labelled rows, 0 elsewhere
            p.div_(norm)
            p.scatter_add_(1, target[i:i + m, None], p.new_full((m, 1), -1.0))
            p.mul_((keep.to(p.dtype) / count)[:, None])
            lg.copy_(p)
            if want_h:
                if grad_h.dtype == dt:
                    torch.mm(lg, w, out=grad_h[i:i + m])
                else:
                    grad_h[i:i + m] = torch.mm(lg, w)
            if want_w:
                if product is None:
                    grad_w.addmm_(lg.t(), x)
                else:
                    torch.mm(lg.t(), x, out=product)
                    grad_w.add_(product)
        del logits, probs, product, w
        ctx.grads = [grad_h, grad_w]
        return total / count

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.grads is None:
            raise RuntimeError("HeadCrossEntropy: backward through the same loss twice (its gradients were made "
                               "once, in forward)")
        grad_h, grad_w = ctx.grads
        ctx.grads = None  # handed on, not kept: autograd can take grad_w as the weight's .grad without a copy
        if grad_h is not None:
            grad_h.mul_(grad_out.to(grad_h.dtype))
        if grad_w is not None:
            grad_w.mul_(grad_out.to(grad_w.dtype))
        return grad_h, None, grad_w, None


def head_cross_entropy(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Linear, chunk: int) -> torch.Tensor:
    """Mean next-token cross-entropy of hidden (N, H) against labels (N,) through the plain linear `head`."""
    return HeadCrossEntropy.apply(hidden, labels, head.weight, chunk)
