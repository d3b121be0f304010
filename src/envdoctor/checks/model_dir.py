"""`envdoctor check --model DIR`: is this folder a model vLLM and transformers will load as intended?"""

from __future__ import annotations

from typing import TYPE_CHECKING

from envdoctor.model import Remedy, Result, fail, ok, skip, warn
from envdoctor.registry import check

if TYPE_CHECKING:  # annotations only: the facts' modules load when their checks run
    from envdoctor.facts.model_dir import ModelDirFacts


@check("model.files", "Model weights", "Model",
       "config.json, dtype stated, every shard in the index present and complete, no stray adapter files",
       needs=("model_dir",), option="model")
def files(model_dir: ModelDirFacts) -> Result:
    m = model_dir
    if not m.exists:
        return fail(f"{m.path}: no such folder")
    if m.adapter_files and m.config is None:
        return fail(f"{m.path} is a LoRA adapter, not a model", m.adapter_files,
                    Remedy(text="Merge it into its base first: envdoctor merge RUN_DIR (or serve it with vLLM's "
                                "--enable-lora beside the base)."))
    problems = ([m.config_error] if m.config_error else []) + m.shard_errors
    if m.config is not None and not m.dtype:
        problems.append("config.json states no dtype (torch_dtype/dtype): loaders fall back to float32, twice "
                        "the memory of bf16")
    if m.config is not None and not m.config.get("architectures"):
        problems.append("config.json has no architectures: vLLM cannot pick a model class")
    if m.adapter_files:
        problems.append(f"adapter files beside full weights ({', '.join(m.adapter_files)}): loaders may apply "
                        "the adapter a second time or pick the adapter instead of the model")
    if m.merge_record not in (None, "verified"):
        problems.append(m.merge_record)
    if problems:
        return fail(f"{m.path}: {len(problems)} problem(s)", problems,
                    Remedy(text="Merge again into a fresh folder (envdoctor merge RUN_DIR --out NEW_DIR); never "
                                "copy an adapter into a merged model's folder."))
    details = [f"{name}: {n} tensors" for name, n in m.shards.items()]
    if not m.generation_config:
        return warn(f"{m.path}: weights complete ({m.tensors} tensors, {m.dtype}), no generation_config.json",
                    details + ["without it vLLM and generate() ignore the model's own eos/sampling defaults"])
    if m.merge_record == "verified":
        details.append("merge verified against base + adapter (envdoctor-merge.json)")
    return ok(f"{m.path}: {len(m.shards)} shard(s), {m.tensors} tensors, {m.dtype}", details)


@check("model.tokenizer", "Model tokenizer", "Model", "tokenizer files and a chat template beside the weights",
       needs=("model_dir",), option="model")
def tokenizer(model_dir: ModelDirFacts) -> Result:
    m = model_dir
    if not m.exists:
        return skip("no model folder")
    if not m.tokenizer_files:
        return fail(f"{m.path}: no tokenizer (tokenizer.json / tokenizer.model)", [],
                    Remedy(text="Copy the tokenizer files of the base model (or the adapter folder) into it."))
    if not m.chat_template:
        return warn(f"{m.path}: tokenizer present, no chat template",
                    ["vLLM's /v1/chat/completions needs one (--chat-template FILE); /v1/completions works without"])
    return ok(f"{m.path}: {', '.join(m.tokenizer_files)} and a chat template")


@check("model.loads", "Model loads", "Model", "the target interpreter loads the config and the tokenizer",
       needs=("model_dir",), option="model")
def loads(model_dir: ModelDirFacts) -> Result:
    m = model_dir
    if not m.exists or m.config is None:
        return skip("no loadable config.json (see model.files)")
    if not isinstance(m.load, dict):
        return fail(f"loading {m.path} in the target interpreter failed: {m.load_error}")
    if "error" in m.load:
        return fail(f"transformers cannot load {m.path}: {m.load['error']}")
    vocab = m.load.get("vocab")
    return ok(f"{m.load.get('config_class', '?')} and {m.load.get('tokenizer_class', '?')} "
              f"({f'{vocab:,}' if isinstance(vocab, int) else '?'} tokens) load")


@check("model.vllm", "Served by vLLM", "Model", "vLLM (where installed) supports the model's architecture",
       needs=("model_dir",), option="model")
def vllm(model_dir: ModelDirFacts) -> Result:
    m = model_dir
    if not m.exists or not m.load or m.config is None:
        return skip("no loadable model (see model.files, model.loads)")
    if "vllm_error" in m.load:
        return fail(f"vLLM is installed but its model registry failed to load: {m.load['vllm_error']}")
    if not isinstance(m.load.get("vllm_archs"), list):
        return skip("vLLM is not installed in the target environment")
    archs = [a for a in m.config.get("architectures") or [] if isinstance(a, str)] \
        if isinstance(m.config.get("architectures"), list) else []
    unknown = [a for a in archs if a not in m.load["vllm_archs"]]
    if unknown:
        return fail(f"vLLM here does not support {', '.join(unknown)}", [],
                    Remedy(text="Upgrade vLLM, or serve with transformers."))
    return ok(f"vLLM supports {', '.join(archs)}")
