"""modules_to_save trained in place: no frozen original kept beside a trained copy.

peft's ModulesToSaveWrapper keeps the original module frozen and trains a deep copy of it. For Llama-3's
128k vocabulary, `modules_to_save: [embed_tokens, lm_head]` is 1.05 B parameters: as fp32 copies with fp32
gradients beside the bf16 originals that is ~10.5 GB (measured on an H200, issue #17 config B: 0.84× the
plain loop's allocated peak, 0.87× its reserved). The runner never uses an original while it trains (the
adapter holds the trained copy; merging reads the base from its files), so the copy's parameters become the
original's own: trained in place, in the weights' dtype, gradients in that dtype too.

Adopted only where nothing else changes:
- the original's parameters belong to no other module (a tied lm_head would otherwise train with it);
- the weights are fp32 (only memory changes), or bf16 with bitsandbytes' 8-bit AdamW, whose state is 8-bit
  and whose update is computed in fp32 whatever the parameter's dtype — what is traded: each update is
  rounded to bf16 (as torchtune trains bf16 weights), and the micro batches' gradients add up in bf16.
  torch's AdamW would keep bf16 moments for bf16 parameters: there the copies stay fp32;
- not under FSDP (one parameter under two names in a sharded module; its copies stay fp32, sharded).
"""

from __future__ import annotations

import torch


def adopt_originals(model, bf16_ok: bool) -> list[str]:
    """Make each modules_to_save copy's parameters its original's (requires_grad on); returns the wrapped
    modules' names. `bf16_ok`: the optimizer keeps fp32-quality state for bf16 parameters."""
    from peft.utils.other import ModulesToSaveWrapper
    allowed = {torch.float32} | ({torch.bfloat16} if bf16_ok else set())
    everywhere = list(model.named_parameters(remove_duplicate=False))
    adopted = []
    for name, wrapper in model.named_modules():
        if not isinstance(wrapper, ModulesToSaveWrapper) or len(wrapper.modules_to_save) != 1:
            continue
        own = dict(wrapper.original_module.named_parameters(remove_duplicate=False))
        ids = {id(p) for p in own.values()}
        prefix = f"{name}.original_module."
        if any(id(p) in ids and not n.startswith(prefix) for n, p in everywhere):
            continue  # tied to another module (lm_head = embed_tokens): that one must keep the frozen weight
        if not own or any(p.dtype not in allowed for p in own.values()):
            continue
        (copy,) = wrapper.modules_to_save.values()
        if set(dict(copy.named_parameters(remove_duplicate=False))) != set(own):
            continue
        for pname, p in own.items():
            owner_name, _, attr = pname.rpartition(".")
            setattr(copy.get_submodule(owner_name) if owner_name else copy, attr, p)
            p.requires_grad_(True)
        adopted.append(name)
    return adopted


def adopted(model) -> list[torch.nn.Parameter]:
    """The parameters that are both an original and its trained copy (what adopt_originals made)."""
    from peft.utils.other import ModulesToSaveWrapper
    out = []
    for wrapper in model.modules():
        if isinstance(wrapper, ModulesToSaveWrapper):
            own = {id(p) for p in wrapper.original_module.parameters()}
            for copy in wrapper.modules_to_save.values():
                out += [p for p in copy.parameters() if id(p) in own]
    return out
