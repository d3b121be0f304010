"""`envdoctor check --model DIR`, run by the *target* interpreter: `python -c <this source>
--envdoctor-smoke DIR`. transformers loads the folder's config and tokenizer; vLLM, when installed, names
the architectures it supports. Prints one JSON object; every failure is a field of it, never a traceback."""

import json
import sys

out = {}
path = sys.argv[2]
try:
    from transformers import AutoConfig, AutoTokenizer
    out["config_class"] = type(AutoConfig.from_pretrained(path)).__name__
    tok = AutoTokenizer.from_pretrained(path)
    out["tokenizer_class"] = type(tok).__name__
    out["vocab"] = len(tok)
    out["chat_template"] = bool(getattr(tok, "chat_template", None))
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"[:500]
try:
    import importlib.util
    if importlib.util.find_spec("vllm") is not None:
        from vllm import ModelRegistry
        out["vllm_archs"] = sorted(ModelRegistry.get_supported_archs())
except Exception as exc:
    out["vllm_error"] = f"{type(exc).__name__}: {exc}"[:500]
print(json.dumps(out))
