"""The bundled runner's standard-library modules (train/envdoctor_runner/corpus.py, basemodel.py),
loaded by file path: the preflight applies the very rules the runner applies, from one source, without
putting the runner's package (or torch) on envdoctor's import path."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from envdoctor.assets import asset

STDLIB_ONLY = ("corpus", "basemodel")


def runner_module(name: str) -> ModuleType:
    if name not in STDLIB_ONLY:
        raise ValueError(f"{name!r} is not one of the runner's standard-library modules")
    key = f"envdoctor._runner_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, asset("train", "envdoctor_runner", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module  # dataclasses look their module up while the class is being made
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise
    return module


def absolute_inputs(data: dict, config_dir) -> dict:
    """The keys of a resolved config that name files, made absolute by the one rule (relative to the
    config's folder): `datasets` paths, and `base_model` when it is a folder. Merge into resolved()."""
    corpus, basemodel = runner_module("corpus"), runner_module("basemodel")
    out: dict = {}
    if isinstance(data.get("datasets"), list):
        out["datasets"] = [dict(d, path=str(corpus.dataset_path(d["path"], config_dir)))
                           if isinstance(d, dict) and isinstance(d.get("path"), str) else d for d in data["datasets"]]
    name = data.get("base_model")
    if isinstance(name, str) and any(basemodel.needs({"model_config": None, "tokenizer": None, **data})):
        where = basemodel.locate(name, config_dir, {})
        if where.kind == "folder":
            out["base_model"] = str(where.path)
    return out
