"""Tokenizer, base model (4-bit NF4 where bitsandbytes can), LoRA adapters and the optimizer."""

from __future__ import annotations

import warnings

import torch

from envdoctor_runner.saved_modules import adopt_originals, adopted


def build_tokenizer(cfg: dict, docs: list[str]):
    if cfg["tokenizer"] == "train-bpe":  # offline: a small byte-level BPE learned from the corpus itself
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        vocab = min(cfg["model_config"].get("vocab_size", 512), 4096)
        tok.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<pad>", "<s>", "</s>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                          show_progress=False))  # writes to the tty directly
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
        # A plain-text template, so that the merged model can be served on a chat endpoint too.
        fast.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
        return fast
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(cfg["base_model"])
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _linear4bit(in_f: int, out_f: int, bias: bool, compute_dtype, cfg: dict):
    """A bitsandbytes 4-bit layer, set up the way this runner uses it for training and evaluation.

    bitsandbytes 0.50 runs a no-grad forward on CPUs with AVX512-BF16 through a repacked-weight kernel
    that fails on shapes it cannot tile (`N must be divisible by block_n` for 344 outputs; `shape
    '[128, 5]' is invalid` for 352) and repacks the weight in place. Evaluation here takes the kernel
    training takes instead: one path, the one four_bit_works proves on the model's own shapes."""
    import bitsandbytes as bnb
    layer = bnb.nn.Linear4bit(in_f, out_f, bias=bias, compute_dtype=compute_dtype,
                              quant_type=cfg["bnb_4bit_quant_type"],
                              compress_statistics=cfg["bnb_4bit_use_double_quant"])
    same_kernel_in_eval(layer)
    return layer


def same_kernel_in_eval(model) -> None:
    """Turn off bitsandbytes' CPU-only repacked inference kernel in every 4-bit layer (see _linear4bit)."""
    for m in model.modules():
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False


def linear_shapes(model) -> list[tuple[int, int]]:
    """The distinct (in, out) shapes of the linear layers that would be quantized (all but lm_head)."""
    return sorted({(c.in_features, c.out_features) for name, c in model.named_modules()
                   if isinstance(c, torch.nn.Linear) and not name.endswith("lm_head")})


def four_bit_works(device: str, shapes: list[tuple[int, int]], compute_dtype, input_dtype, cfg: dict,
                   layer=_linear4bit) -> str | None:
    """None if 4-bit layers of every one of `shapes` run here what training runs: a forward and backward
    with gradients (train mode) and a no-grad forward (eval mode, validation), with finite outputs close
    to the dequantized weight's; else why not, naming the shape. `layer` builds the layer under test."""
    try:
        import bitsandbytes as bnb
    except Exception as exc:  # noqa: BLE001 - not importable is one more reason for no 4-bit
        return f"bitsandbytes does not import: {type(exc).__name__}: {exc}".splitlines()[0][:200]
    gen = torch.Generator().manual_seed(0)
    for in_f, out_f in shapes:
        try:
            w = torch.randn(out_f, in_f, generator=gen) / in_f ** 0.5
            lin = layer(in_f, out_f, False, compute_dtype, cfg)
            lin.weight = bnb.nn.Params4bit(w.to(input_dtype), requires_grad=False,
                                           quant_type=cfg["bnb_4bit_quant_type"],
                                           compress_statistics=cfg["bnb_4bit_use_double_quant"])
            lin = lin.to(device)
            x = torch.randn(3, 5, in_f, generator=gen).to(device=device, dtype=input_dtype)
            ref = x.float() @ bnb.functional.dequantize_4bit(lin.weight.data, lin.weight.quant_state).float().t()
            lin.train()
            xg = x.clone().requires_grad_(True)
            out = lin(xg)
            out.float().square().mean().backward()
            if xg.grad is None or not torch.isfinite(xg.grad).all():
                return f"{in_f}×{out_f}: the backward gives no finite input gradient"
            lin.eval()
            with torch.no_grad():
                ev = lin(x)
            for what, y in (("forward", out), ("no-grad forward", ev)):
                err = float((y.detach().float() - ref).norm() / ref.norm().clamp_min(1e-12))
                if not torch.isfinite(y).all() or err > 0.05:
                    return f"{in_f}×{out_f}: the {what} is wrong (relative error {err:.3g})"
        except Exception as exc:  # noqa: BLE001 - any failure means: no 4-bit at this shape
            return f"{in_f}×{out_f}: {type(exc).__name__}: {exc}".splitlines()[0][:200]
    return None


_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def dtypes(cfg: dict, device: str, notes: list[str]):
    """(weights dtype, 4-bit compute dtype) on this device: bf16 only on a CUDA GPU that has it."""
    cuda = device.startswith("cuda")
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    if cfg["bf16"] is True and not bf16_ok:
        notes.append(f"bf16: true, but {device} has no bf16: training in float32")
    dtype = torch.bfloat16 if cfg["bf16"] in (True, "auto") and bf16_ok else torch.float32
    compute = _DTYPES[cfg["bnb_4bit_compute_dtype"]]
    if compute != torch.float32 and not cuda:
        if cfg["load_in_4bit"]:
            notes.append(f"bnb_4bit_compute_dtype {cfg['bnb_4bit_compute_dtype']} → float32 on the CPU")
        compute = torch.float32
    return dtype, compute


def _skeleton(cfg: dict, tokenizer):
    """(model config, a model built on the meta device): the shapes, without memory or weights."""
    if cfg["model_config"]:
        from transformers import LlamaConfig
        mc = dict(cfg["model_config"], vocab_size=max(len(tokenizer), cfg["model_config"].get("vocab_size", 0)),
                  pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id)
        config = LlamaConfig(**mc)
    else:
        from transformers import AutoConfig
        config = AutoConfig.from_pretrained(cfg["base_model"])
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        return config, AutoModelForCausalLM.from_config(config)


def build_model(cfg: dict, tokenizer, device: str, notes: list[str], base_dir=None, fsdp: bool = False,
                shard=None, loading: dict | None = None):
    """The peft model to train. A model built from `model_config` (random weights) is first saved
    unquantized to `base_dir`, when given: merging needs the base weights the adapter was trained on.

    4-bit from a config: built one piece at a time on `device` (build_4bit_streamed), the 4-bit layers
    Shardable4bitLinear (plain tensors FSDP can shard); with `shard` (FSDP's fully_shard, from
    distributed.sharder) each decoder layer is sharded as soon as it is built, so no process holds the
    whole model, float or 4-bit; `loading` receives the weight bytes a process held at most."""
    dtype, compute = dtypes(cfg, device, notes)
    config, skeleton = _skeleton(cfg, tokenizer)
    use_4bit = cfg["load_in_4bit"]
    if use_4bit:  # proved at the model's own layer shapes, in training's and validation's modes, first
        why_not = four_bit_works(device, linear_shapes(skeleton), compute, dtype, cfg)
        if why_not:
            notes.append(f"4-bit is not available here ({why_not}): training plain LoRA on {dtype} weights")
            use_4bit = False
    targets = sorted({n.rsplit(".", 1)[-1] for n, m in skeleton.named_modules()
                      if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")})
    del skeleton
    if cfg["model_config"] and use_4bit:
        model, n = build_4bit_streamed(cfg, config, tokenizer, dtype, compute, device, targets, base_dir, shard,
                                       loading)
        notes.append(f"{n} linear layers quantized to {cfg['bnb_4bit_quant_type'].upper()} with bitsandbytes "
                     f"on {device}, one decoder layer at a time" + (", each sharded as it was built" if shard else ""))
        return model
    if cfg["model_config"]:
        from transformers import LlamaForCausalLM
        torch.manual_seed(cfg["seed"])
        # Built where it runs and in its dtype: an 8B shape is initialised on the GPU in bf16 (16 GB), not
        # in fp32 on the CPU.
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                model = LlamaForCausalLM(config)
        finally:
            torch.set_default_dtype(default)
        if base_dir is not None and not (base_dir / "config.json").exists():
            from envdoctor_runner import atomic
            with atomic.staged(base_dir, weight_bytes(model, whole=True)) as tmp:  # complete, or not there
                model.save_pretrained(tmp, max_shard_size="2GB")
                tokenizer.save_pretrained(tmp)
        model = model.to(device)
        return attach_lora(model, cfg, dtype, fsdp=fsdp)
    if use_4bit and shard is not None and _streamable(cfg["base_model"], config, dtype):
        model, n = build_4bit_streamed(cfg, config, tokenizer, dtype, compute, device, targets, None, shard,
                                       loading, folder=cfg["base_model"])
        notes.append(f"{n} linear layers quantized to {cfg['bnb_4bit_quant_type'].upper()} with bitsandbytes "
                     f"on {device}, read from {cfg['base_model']} one decoder layer at a time, each sharded as it "
                     "was built")
        return model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg["bnb_4bit_quant_type"],
                               bnb_4bit_compute_dtype=compute,
                               bnb_4bit_use_double_quant=cfg["bnb_4bit_use_double_quant"]) if use_4bit else None
    model = AutoModelForCausalLM.from_pretrained(cfg["base_model"], dtype=dtype, quantization_config=quant,
                                                 device_map={"": device} if device.startswith("cuda") else None)
    same_kernel_in_eval(model)
    if use_4bit and fsdp:  # Params4bit loses its quant_state under FSDP: plain tensors instead
        from envdoctor_runner.shardable4bit import convert_linear4bit
        convert_linear4bit(model, dtype)
        return attach_lora(model, cfg, dtype, all_linear=targets, device=device, fsdp=True)
    return attach_lora(model, cfg, dtype, fsdp=fsdp)


def build_4bit_streamed(cfg: dict, config, tokenizer, dtype, compute, device: str, targets: list[str],
                        base_dir=None, shard=None, loading: dict | None = None, folder=None):
    """(peft model, linear layers quantized): a 4-bit model, random weights from a config or (`folder`) a
    pretrained model's safetensors read a tensor at a time, built so that no process ever holds the whole
    model, float or 4-bit.

    The whole model is first built on the meta device (shapes, no memory) and peft's get_peft_model wraps it
    there: the LoRA layers and modules_to_save copies get exactly the names peft gives them on a real model
    (the adapter files, resume and `envdoctor merge` are unchanged). Then piece by piece (the embedding, each
    decoder layer, the final norm, lm_head) the piece is materialised on `device` in `dtype`; its base weights
    are drawn from its own seeded generator (_init_random: the same weights whatever the number of
    processes) or read from `folder`, its LoRA A from a second one (B is zero, as peft's default), its modules_to_save copies
    copied from the originals; rank 0 writes the float piece to `base_dir` under the plain model's names
    (merging needs the float base); a decoder layer's base linears become Shardable4bitLinear; and `shard`
    (FSDP's fully_shard, or None) splits the piece at once, so a process keeps 1/N of it. The embedding and
    the decoder layers are sharded as they are built; the final norm and lm_head belong to the root, which
    distributed.wrap shards last.

    Weights held by a process at most: 1/N of the 4-bit model + one float piece + the root's pieces.
    `loading` receives those figures in bytes, counted from the tensors (no allocator or RSS noise)."""
    from peft import get_peft_model
    from envdoctor_runner.shardable4bit import quantize_modules
    model = _meta_model(config, dtype, folder)
    inner = model.model
    tied = bool(getattr(config, "tie_word_embeddings", False))
    paths = pieces_of(model)
    read = _FolderReader(folder, dtype) if folder is not None else None
    root = {"model.norm", "lm_head"} | ({"model.embed_tokens"} if tied else set())  # a tied weight is not split
    # Each piece as the plain model has it (peft wraps some modules next): its parameters under their plain
    # names (the float base is written with them) and its modules in the order _init_random draws in.
    head, embed = model.lm_head, inner.embed_tokens  # the plain modules: peft may wrap them next
    plain = {}
    for path in paths:
        piece = model.get_submodule(path)
        plain[path] = ([(name, *_owner(piece, name)) for name, _ in piece.named_parameters()], list(piece.modules()))
    _freeze_and_checkpoint(model, cfg)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*meta device.*")
        peft_model = get_peft_model(model, _lora_config(cfg, targets))
    writer = (_BaseWriter(base_dir, len(paths)) if base_dir is not None and not (base_dir / "config.json").exists()
              else None)
    count, peak, largest_piece, root_bytes = 0, 0, 0, 0
    for index, path in enumerate(paths):
        piece = model.get_submodule(path)  # peft's wrapper where the module is in modules_to_save
        params, modules = plain.pop(path)
        piece.to_empty(device=device)
        for p in piece.parameters():  # what trains is fp32 (LoRA is; modules_to_save copies are not)
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
        if read is not None:
            read.fill(path, params)
        else:
            _init_random(modules, config, cfg["seed"], index, device)
        _init_adapters(piece, peft_model.peft_config["default"], cfg["seed"], index, device)
        largest_piece = max(largest_piece, weight_bytes(piece))  # the float piece, before quantization
        peak = max(peak, weight_bytes(peft_model))
        if writer:
            writer.add({f"{path}.{name}": getattr(owner, attr) for name, owner, attr in params})
        if path.startswith("model.layers."):
            count += quantize_modules(piece, [m for m in modules if type(m) is torch.nn.Linear], cfg, compute, dtype)
        del params, modules  # the float linears' last references
        peak = max(peak, weight_bytes(peft_model))
        if path in root:
            root_bytes += weight_bytes(piece)
        elif shard is not None:
            shard(piece)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        _return_freed_memory()
    with torch.device(device):  # its buffers were computed on the meta device: computed again
        inner.rotary_emb = type(inner.rotary_emb)(config)
    if tied:  # lm_head is no piece: it takes the embedding's weight (and a modules_to_save copy of it)
        wrapper = model.get_submodule("lm_head")
        wrapper.to_empty(device=device)
        head.weight = embed.weight
        for p in wrapper.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
        _init_adapters(wrapper, peft_model.peft_config["default"], cfg["seed"], len(paths), device)
        root_bytes += weight_bytes(wrapper) - weight_bytes(embed)
    if writer:
        writer.finish(config, tokenizer, type(model).__name__)
    left = [n for n, t in [*peft_model.named_parameters(), *peft_model.named_buffers()] if t.is_meta]
    if left:  # a model class with parts outside the pieces above: fail here, not in the first forward
        raise RuntimeError(f"left on the meta device after loading: {', '.join(left[:5])}")
    if shard is None:  # its copies were made fp32 piece by piece: in place now (saved_modules.py)
        _fp32_or_in_place(peft_model, cfg, device, fsdp=False)
        _return_freed_memory()
    if dtype != torch.float32:  # a trained fp32 embedding copy must not turn the residual stream into fp32
        peft_model.get_input_embeddings().register_forward_hook(lambda _m, _i, out: out.to(dtype))
    if loading is not None:
        loading.update(peak_loaded_weight_bytes=peak, whole_model_weight_bytes=weight_bytes(peft_model, whole=True),
                       largest_piece_weight_bytes=largest_piece, root_weight_bytes=root_bytes)
    return peft_model, count


def _streamable(base_model: str, config, dtype) -> bool:
    """Whether a pretrained base can be read a piece at a time: a local folder of safetensors files whose
    tensors carry the model's own module names, in a layout pieces_of knows (else from_pretrained loads it
    whole, as without FSDP)."""
    from pathlib import Path
    from envdoctor_runner import safetensors_stream
    folder = Path(base_model)
    try:
        names = set(safetensors_stream.weight_files(folder)) if folder.is_dir() else set()
    except (OSError, ValueError):
        return False
    model = _meta_model(config, dtype, folder)
    paths = pieces_of(model)
    return bool(names) and paths is not None and all(
        f"{p}.{n}" in names for p in paths for n, _ in model.get_submodule(p).named_parameters())


def _meta_model(config, dtype, folder):
    """The model on the meta device: Llama from a config, else the folder's architecture."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            if folder is None:
                from transformers import LlamaForCausalLM
                return LlamaForCausalLM(config)
            from transformers import AutoModelForCausalLM
            return AutoModelForCausalLM.from_config(config)
    finally:
        torch.set_default_dtype(default)


def pieces_of(model) -> list[str] | None:
    """The pieces the model is built from, in order (embedding, decoder layers, final norm, lm_head unless
    tied), or None for a layout this loader does not know: another module than those, or a buffer inside a
    piece (materialising would leave it uninitialised)."""
    inner = getattr(model, "model", None)
    if inner is None or not all(hasattr(inner, n) for n in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return None
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    paths = (["model.embed_tokens"] + [f"model.layers.{i}" for i in range(len(inner.layers))] + ["model.norm"]
             + ([] if tied else ["lm_head"]))
    covered = set(paths) | {"model.rotary_emb", "model.layers", "model", "", "lm_head"}
    for name, module in model.named_modules():
        if name not in covered and not any(name.startswith(p + ".") for p in paths):
            return None
    for name, _ in model.named_buffers():
        if any(name.startswith(p + ".") for p in paths):
            return None
    return paths


class _FolderReader:
    """A pretrained model's tensors read from its safetensors files one at a time (plain reads, no mmap:
    the process holds the tensor, not the file), cast to the training dtype."""

    def __init__(self, folder, dtype):
        from pathlib import Path
        from envdoctor_runner import safetensors_stream
        self.folder = Path(folder)
        self.files = safetensors_stream.weight_files(self.folder)
        self.heads: dict = {}
        self.dtype = dtype

    def fill(self, path: str, params) -> None:
        from envdoctor_runner import safetensors_stream
        with torch.no_grad():
            for name, owner, attr in params:
                key = f"{path}.{name}"
                file = self.files.get(key)
                if file is None:
                    raise FileNotFoundError(f"{self.folder}: no tensor {key} in its safetensors files")
                if file not in self.heads:
                    self.heads[file] = safetensors_stream.header(file)
                tensor = safetensors_stream.read(file, key, *self.heads[file])
                target = getattr(owner, attr)
                if tuple(tensor.shape) != tuple(target.shape):
                    raise ValueError(f"{file}: {key} has shape {tuple(tensor.shape)}, the config makes "
                                     f"{tuple(target.shape)}")
                target.copy_(tensor.to(self.dtype))


def _return_freed_memory() -> None:
    """Give the float piece's freed host memory back to the system (glibc keeps freed heap memory for reuse,
    which RSS then still counts: measured, 0.1-0.2 GiB more peak RSS per process). Elsewhere: nothing."""
    import ctypes
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _owner(piece: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    """(the module holding parameter `name` of piece, its attribute name)."""
    module, _, attr = name.rpartition(".")
    return (piece.get_submodule(module) if module else piece), attr


def _init_adapters(piece: torch.nn.Module, lora, seed: int, index: int, device: str) -> None:
    """The piece's adapters after materialisation: LoRA A as peft initialises it (kaiming-uniform, or normal
    for init_lora_weights "gaussian"), drawn from the piece's own generator; B zero; modules_to_save copies
    equal to their originals."""
    import math
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import ModulesToSaveWrapper
    gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + index + 500_009)
    with torch.no_grad():
        for m in piece.modules():
            if isinstance(m, LoraLayer):
                for name in m.lora_A:
                    a, b = m.lora_A[name], m.lora_B[name]
                    if lora.init_lora_weights is True:
                        torch.nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5), generator=gen)
                    elif str(lora.init_lora_weights).lower() == "gaussian":
                        a.weight.normal_(0.0, 1 / m.r[name], generator=gen)
                    else:
                        raise ValueError(f"init_lora_weights={lora.init_lora_weights!r}: not supported when the "
                                         "model is built a layer at a time")
                    b.weight.zero_()
                    if b.bias is not None:
                        b.bias.zero_()
            elif isinstance(m, ModulesToSaveWrapper):
                for copy in m.modules_to_save.values():
                    copy.load_state_dict(m.original_module.state_dict())


def weight_bytes(module: torch.nn.Module, whole: bool = False) -> int:
    """Bytes of the parameters and buffers this process holds (a sharded one: its local shard; on the meta
    device: none); with whole, as if every sharded tensor were whole."""
    seen, n = set(), 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) in seen or t.is_meta:
            continue
        seen.add(id(t))
        local = t.to_local() if hasattr(t, "to_local") and not whole else t  # a DTensor: its shard
        n += local.numel() * local.element_size()
    return n

def _init_random(modules: list[torch.nn.Module], config, seed: int, index: int, device: str) -> None:
    """Llama's initialisation (normal(0, initializer_range) for linear and embedding weights, ones for the
    norms) of one piece's modules, in order, drawn from a generator seeded by (seed, piece): no order of
    construction to reproduce."""
    gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + index)
    std = getattr(config, "initializer_range", 0.02)
    with torch.no_grad():
        for m in modules:
            if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
                m.weight.normal_(0.0, std, generator=gen)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
                if isinstance(m, torch.nn.Embedding) and m.padding_idx is not None:
                    m.weight[m.padding_idx].zero_()
            elif type(m).__name__.endswith("RMSNorm"):
                m.weight.fill_(1.0)


class _BaseWriter:
    """The float base as save_pretrained writes it (safetensors shards, an index, config.json), one piece
    per shard, so no process holds the whole model; into a staging folder renamed to `folder` once complete
    (atomic). A failed write (a full disk) is kept, the staging folder removed, later pieces skipped:
    the model is still built to the end on every rank (under FSDP its pieces are sharded as they are
    built), and finish() raises it (atomic.WriteFailed)."""

    def __init__(self, folder, n: int):
        from envdoctor_runner import atomic
        self.final, self.n, self.i, self.weight_map, self.size = folder, n, 0, {}, 0
        self.folder = atomic.staging_name(folder)
        self.failed: BaseException | None = None
        self._stage = atomic.staged(folder)
        self._stage.__enter__()

    def _abandon(self, exc: BaseException) -> None:
        try:
            self._stage.__exit__(type(exc), exc, exc.__traceback__)  # removes the staging folder, wraps exc
        except BaseException as wrapped:  # noqa: BLE001 - kept for finish()
            self.failed = wrapped
        if self.failed is None:
            self.failed = exc

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        """One piece's float tensors, by their names in the plain model."""
        from safetensors.torch import save_file
        self.i += 1
        name = f"model-{self.i:05d}-of-{self.n:05d}.safetensors"
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        for k, v in tensors.items():
            self.weight_map[k] = name
            self.size += v.numel() * v.element_size()
        if self.failed is None:
            try:
                save_file(tensors, self.folder / name, metadata={"format": "pt"})
            except Exception as exc:  # noqa: BLE001 - finish() raises it, once the model is built
                self._abandon(exc)

    def finish(self, config, tokenizer, architecture: str) -> None:
        import json
        if self.failed is None:
            try:
                # save_pretrained records the model class; vLLM (and `check --model`) pick the class from it.
                config.architectures = [architecture]
                (self.folder / "model.safetensors.index.json").write_text(json.dumps(
                    {"metadata": {"total_size": self.size}, "weight_map": self.weight_map}, indent=2))
                tokenizer.save_pretrained(self.folder)
                config.save_pretrained(self.folder)
            except Exception as exc:  # noqa: BLE001
                self._abandon(exc)
        if self.failed is None:
            try:
                self._stage.__exit__(None, None, None)  # fsync, rename into place
                return
            except Exception as exc:  # noqa: BLE001 - already wrapped, staging removed
                self.failed = exc
        if getattr(self.failed, "needed", 1) is None:
            self.failed.needed = self.size  # the whole float base, counted piece by piece
        raise self.failed


def attach_lora(model, cfg: dict, dtype, all_linear: list[str] | None = None, device: str | None = None,
                fsdp: bool = False):
    """Freeze the base, turn on gradient checkpointing, add LoRA (and modules_to_save) per the config.

    Not peft's prepare_model_for_kbit_training: it casts every non-quantized weight to fp32, which for
    Llama-3's 128k vocabulary is 2 GiB more per embedding matrix and an fp32 residual stream. The frozen
    base stays in its dtype; LoRA trains in fp32; modules_to_save train in place where that changes nothing
    but memory (saved_modules.py), else as fp32 copies."""
    from peft import get_peft_model
    _freeze_and_checkpoint(model, cfg)
    shardable = all_linear is not None  # the base's 4-bit layers are Shardable4bitLinear
    lora = _lora_config(cfg, all_linear)
    if shardable:  # peft's own LoRA Linear around it: it only calls the base layer's forward
        from peft.tuners.lora.layer import Linear as LoraLinear
        from envdoctor_runner.shardable4bit import Shardable4bitLinear
        lora._register_custom_module({Shardable4bitLinear: LoraLinear})
    with warnings.catch_warnings():  # peft warns of a layer type it does not know; it reads in/out_features
        warnings.filterwarnings("ignore", message="Unsupported layer type")
        model = get_peft_model(model, lora)
    if shardable and device is not None:  # peft puts adapters beside a layer's `weight`; this one has none
        model.to(device)
    _fp32_or_in_place(model, cfg, device or str(next(model.parameters()).device), fsdp)
    if dtype != torch.float32:  # a trained fp32 embedding copy must not turn the residual stream into fp32
        model.get_input_embeddings().register_forward_hook(lambda _m, _i, out: out.to(dtype))
    return model


def _fp32_or_in_place(model, cfg: dict, device: str, fsdp: bool) -> None:
    """What trains: LoRA in fp32 (it is already); modules_to_save in place (not under FSDP), else fp32 copies."""
    if not fsdp:
        adopt_originals(model, bf16_ok=eight_bit_optimizer(cfg, device))
    in_place = {id(p) for p in adopted(model)}
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32 and id(p) not in in_place:
            p.data = p.data.float()


def _freeze_and_checkpoint(model, cfg: dict) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg["gradient_checkpointing"]:
        # Explicitly, non-reentrant (no input-grad hook needed). With transformers 5 / peft 0.21 the kbit
        # preparation alone left it off: measured on an H200, 101 GiB peak instead of 16 (8B, 2 × 2048).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def _lora_config(cfg: dict, all_linear: list[str] | None):
    """peft's LoraConfig for this run; all_linear: the linear layers' names, where "all-linear" (which knows
    only peft's own layer classes) would miss them."""
    from peft import LoraConfig
    everything = all_linear if all_linear is not None else "all-linear"
    return LoraConfig(r=cfg["lora_r"], lora_alpha=cfg["lora_alpha"], lora_dropout=cfg["lora_dropout"],
                      target_modules=everything if cfg["lora_target_linear"] else cfg["lora_target_modules"],
                      modules_to_save=cfg["lora_modules_to_save"] or None, task_type="CAUSAL_LM")


EIGHT_BIT = ("paged_adamw_8bit", "adamw_8bit", "adamw_bnb_8bit")


def eight_bit_optimizer(cfg: dict, device: str) -> bool:
    """Whether build_optimizer makes a bitsandbytes 8-bit AdamW (on a CUDA GPU) for this config."""
    return cfg["optimizer"] in EIGHT_BIT and device.startswith("cuda")


def build_optimizer(cfg: dict, model, device: str, notes: list[str]):
    params = [p for p in model.parameters() if p.requires_grad]
    name, cuda = cfg["optimizer"], device.startswith("cuda")
    lr, decay = cfg["learning_rate"], cfg["weight_decay"]
    if eight_bit_optimizer(cfg, device):
        import bitsandbytes as bnb
        cls = bnb.optim.PagedAdamW8bit if name.startswith("paged") else bnb.optim.AdamW8bit
        return cls(params, lr=lr, weight_decay=decay)
    if name == "adamw_torch_fused" and cuda:
        return torch.optim.AdamW(params, lr=lr, weight_decay=decay, fused=True)
    if name not in ("adamw_torch", "adamw_torch_fused"):
        notes.append(f"optimizer {name} needs a CUDA GPU: using torch AdamW")
    return torch.optim.AdamW(params, lr=lr, weight_decay=decay)
