"""A frozen 4-bit (NF4/FP4) linear layer whose whole quantised state is plain tensors, so FSDP can shard it.

bitsandbytes' Linear4bit keeps the packed weight in a Params4bit and its quantisation state (absmax, code,
shape, nested statistics) as Python attributes of that parameter. FSDP replaces parameters by shards and
gathers them into new tensors: the attributes do not travel, and a layer that lost them computes garbage
(the FSDP-QLoRA notes report loss 0 / NaN; tests/test_fsdp4.py shows FSDP2 here). This layer holds

  packed   the 4-bit codes, two per byte, viewed in a floating storage dtype (the model's: bf16 on a GPU,
           float32 on the CPU), a 1-D frozen parameter: FSDP shards and all-gathers it like any weight
  absmax   the per-block scales (uint8 when double-quantised, else float32), their bytes viewed in the
           storage dtype as a frozen parameter (FSDP re-creates parameters and refuses integer ones): sharded
  absmax2  (double quantisation) the scales of the scales, float32, a frozen parameter: sharded
  code, code2, offset   16 / 256 / 1 constants, buffers: every rank holds them whole

and the rest (shape, block sizes, quant type, dtype) as plain ints and strings fixed at construction. The
forward rebuilds a bitsandbytes QuantState from the (gathered) tensors and calls the same matmul_4bit that
Linear4bit calls, so its outputs and input gradients equal Linear4bit's bit for bit (tests/test_fsdp4.py).
"""

from __future__ import annotations

import torch


class Shardable4bitLinear(torch.nn.Module):
    def __init__(self, in_features: int, out_features: int, packed: torch.Tensor, n_bytes: int, state,
                 bias: torch.Tensor | None, compute_dtype):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.n_bytes, self.compute_dtype = n_bytes, compute_dtype
        self.blocksize, self.quant_type, self.dtype = state.blocksize, state.quant_type, state.dtype
        frozen = lambda t: torch.nn.Parameter(t, requires_grad=False)  # noqa: E731
        self.packed = frozen(packed)
        # uint8 (double-quantised) scales as bytes in the storage dtype too: FSDP (torch 2.11) re-creates
        # every parameter it shards as nn.Parameter(requires_grad=...), which refuses an integer dtype.
        self.absmax_dtype, self.absmax_shape = state.absmax.dtype, tuple(state.absmax.shape)
        self.absmax_bytes, stored = _bytes_in(state.absmax.contiguous(), packed.dtype)
        self.absmax_store = frozen(stored)
        self.register_buffer("code", state.code.clone())
        self.nested = state.nested
        if self.nested:
            self.absmax2 = frozen(state.state2.absmax.contiguous())
            self.register_buffer("code2", state.state2.code.clone())
            self.register_buffer("offset", state.offset.reshape(1).clone())
            self.blocksize2 = state.state2.blocksize
        self.bias = frozen(bias) if bias is not None else None

    @property
    def absmax(self) -> torch.Tensor:
        raw = self.absmax_store.reshape(-1).view(torch.uint8)[:self.absmax_bytes]
        return raw.view(self.absmax_dtype).reshape(self.absmax_shape)

    @classmethod
    def quantize(cls, weight: torch.Tensor, bias: torch.Tensor | None, cfg: dict, compute_dtype,
                 storage_dtype) -> "Shardable4bitLinear":
        """From a float weight (out, in), quantised where it lies (GPU, or CPU) exactly as Params4bit does."""
        import bitsandbytes.functional as F
        packed, state = F.quantize_4bit(weight, blocksize=64, compress_statistics=cfg["bnb_4bit_use_double_quant"],
                                        quant_type=cfg["bnb_4bit_quant_type"], quant_storage=torch.uint8)
        return cls.from_packed(weight.shape[1], weight.shape[0], packed, state, bias, compute_dtype, storage_dtype)

    @classmethod
    def from_linear4bit(cls, layer, storage_dtype) -> "Shardable4bitLinear":
        """From a bitsandbytes Linear4bit (a pretrained model loaded with a BitsAndBytesConfig)."""
        w = layer.weight
        return cls.from_packed(layer.in_features, layer.out_features, w.data, w.quant_state,
                               layer.bias.data if layer.bias is not None else None, layer.compute_dtype, storage_dtype)

    @classmethod
    def from_packed(cls, in_f, out_f, packed, state, bias, compute_dtype, storage_dtype) -> "Shardable4bitLinear":
        n_bytes, stored = _bytes_in(packed, storage_dtype)
        return cls(in_f, out_f, stored, n_bytes, state, bias, compute_dtype)

    def quant_state(self):
        import bitsandbytes.functional as F
        state2 = F.QuantState(absmax=self.absmax2, code=self.code2, blocksize=self.blocksize2,
                              dtype=torch.float32) if self.nested else None
        return F.QuantState(absmax=self.absmax, shape=torch.Size((self.out_features, self.in_features)),
                            code=self.code, blocksize=self.blocksize, quant_type=self.quant_type, dtype=self.dtype,
                            offset=self.offset[0] if self.nested else None, state2=state2)

    def packed_bytes(self) -> torch.Tensor:
        return self.packed.reshape(-1).view(torch.uint8)[:self.n_bytes].view(-1, 1)

    def dequantized(self) -> torch.Tensor:
        import bitsandbytes.functional as F
        return F.dequantize_4bit(self.packed_bytes(), self.quant_state())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import bitsandbytes as bnb
        inp_dtype = x.dtype  # as Linear4bit.forward: compute in compute_dtype, return the input's dtype
        if self.compute_dtype is not None:
            x = x.to(self.compute_dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return bnb.matmul_4bit(x, self.packed_bytes(), bias=bias, quant_state=self.quant_state()).to(inp_dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, {self.quant_type}, "
                f"double_quant={self.nested}, storage={self.packed.dtype}")


def _bytes_in(t: torch.Tensor, storage_dtype) -> tuple[int, torch.Tensor]:
    """(byte count, a 1-D copy of t's bytes viewed in storage_dtype, zero-padded to whole elements)."""
    raw = t.reshape(-1).view(torch.uint8)
    n_bytes = raw.numel()
    pad = -n_bytes % torch.tensor([], dtype=storage_dtype).element_size()
    if pad:
        raw = torch.cat([raw, raw.new_zeros(pad)])
    return n_bytes, raw.view(storage_dtype).clone()


def quantize_modules(module: torch.nn.Module, linears: list[torch.nn.Linear], cfg: dict, compute_dtype,
                     storage_dtype) -> int:
    """Replace each of `linears` (nn.Linear descendants of module, wherever peft put them: a LoRA layer's
    base_layer) by a Shardable4bitLinear; their float weights go with them."""
    targets, count = {id(m) for m in linears}, 0
    for _name, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            if id(child) in targets:
                setattr(parent, child_name, Shardable4bitLinear.quantize(
                    child.weight.data, child.bias.data if child.bias is not None else None, cfg, compute_dtype,
                    storage_dtype))
                count += 1
    return count


def convert_linear4bit(model: torch.nn.Module, storage_dtype) -> int:
    """Replace bitsandbytes Linear4bit layers (from_pretrained) by Shardable4bitLinear."""
    import bitsandbytes as bnb
    count = 0
    for _name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, bnb.nn.Linear4bit):
                setattr(parent, child_name, Shardable4bitLinear.from_linear4bit(child, storage_dtype))
                count += 1
    return count
