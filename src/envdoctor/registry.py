"""The one registry: every check module and every fact provider is named here, nowhere else.

Checks are declared with `@check(...)` in the modules of envdoctor/checks/; `load()` imports the modules
listed in it and collects what they declare (declaring registers nothing: importing a check module has
no effect on the registry). Providers are listed in `PROVIDERS` below; the CLI starts the slow probes
from this table before it imports any check module.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from dataclasses import dataclass
from typing import Callable

from envdoctor.applies import CONDITIONS, not_applicable
from envdoctor.facts.smoke import STAGES, provider_for
from envdoctor.model import Result


@dataclass(frozen=True)
class Check:
    id: str                 # stable dotted id, e.g. "packages.requirements"
    title: str
    category: str
    looks_at: str           # one line for `envdoctor checks`
    needs: tuple[str, ...]  # fact providers; their facts are passed as keyword arguments
    fn: Callable[..., Result]
    timeout: float = 10.0
    option: str | None = None  # runs only with this CLI option ("deep", "recipe") or when named explicitly
    applies: tuple[str, ...] = ()  # conditions (envdoctor.applies) that must hold, else the check skips


@dataclass(frozen=True)
class Provider:
    name: str
    fn: Callable | str      # (system, ctx, **facts of `needs`) -> facts; or "module:function", imported when
    #                         the facts are first gathered (a plain `check` never imports the training config's,
    #                         the model folder's or the smoke tests' modules)
    timeout: float | str    # seconds, or the name of a Context field (plus a margin)
    owner: str              # the check that reports this provider's failure as a failure
    needs: tuple[str, ...] = ()  # other providers whose facts this one reads

    def function(self) -> Callable:
        if callable(self.fn):
            return self.fn
        module, _, attr = self.fn.partition(":")
        return getattr(importlib.import_module(module), attr)


def check(id: str, title: str, category: str, looks_at: str, needs: tuple[str, ...] = (),
          timeout: float = 10.0, option: str | None = None, applies: tuple[str, ...] = ()):
    """Declare a check. The decorated function gets `.check` (its Check) and folds in `applies`: called
    on a machine where a condition does not hold, it returns that condition's skip without running."""
    def declare(fn: Callable[..., Result]) -> Callable[..., Result]:
        if not applies:  # nothing to fold in (and no signature to read: ~30 checks load on every run)
            fn.check = Check(id, title, category, looks_at, tuple(needs), fn, timeout, option, ())
            return fn
        sig = inspect.signature(fn)
        for name in applies:
            if name not in CONDITIONS:
                raise ValueError(f"check {id!r}: unknown condition {name!r} (envdoctor.applies.CONDITIONS)")
            if CONDITIONS[name].fact not in needs or CONDITIONS[name].fact not in sig.parameters:
                raise ValueError(f"check {id!r}: applies={name!r} reads the {CONDITIONS[name].fact!r} facts: "
                                 "name them in needs and as a parameter")

        @functools.wraps(fn)
        def guarded(*args, **kwargs) -> Result:
            skipped = not_applicable(applies, sig.bind(*args, **kwargs).arguments) if applies else None
            return skipped if skipped is not None else fn(*args, **kwargs)

        guarded.check = Check(id, title, category, looks_at, tuple(needs), guarded, timeout, option, tuple(applies))
        return guarded
    return declare


# Every fact provider, by name ("module:function" under envdoctor.facts: imported when first needed).
PROVIDERS: dict[str, Provider] = {p.name: p for p in (
    Provider("host", "envdoctor.facts.host:probe_host", 10.0, owner="system.os"),
    Provider("python", "envdoctor.facts.python_env:probe_python", "probe_timeout", owner="python.interpreter"),
    Provider("gpu", "envdoctor.facts.gpu:probe_gpu", 30.0, owner="gpu.driver"),
    Provider("toolkit", "envdoctor.facts.toolkit:probe_toolkit", 30.0, owner="gpu.nvcc"),
    Provider("torch", "envdoctor.facts.torch_build:probe_torch", 30.0, owner="gpu.torch", needs=("python",)),
    Provider("binaries", "envdoctor.facts.binaries:probe_binaries", 30.0, owner="binaries.extensions",
             needs=("python", "torch")),
    Provider("imports", "envdoctor.facts.imports:probe_imports", "smoke_timeout", owner="deep.imports",
             needs=("binaries",)),
    *(Provider(f"smoke_{stage}", provider_for(stage), "smoke_timeout", owner=f"deep.{stage}", needs=("gpu",))
      for stage in STAGES),
    Provider("recipe", "envdoctor.facts.recipe:probe_recipe", 10.0, owner="recipe.match"),
    Provider("wsl", "envdoctor.facts.wsl:probe_wsl", 30.0, owner="wsl.version"),
    Provider("train_config", "envdoctor.facts.train_config:probe_train_config", 10.0, owner="config.valid"),
    Provider("datasets", "envdoctor.facts.train_inputs:probe_datasets", 120.0, owner="config.datasets",
             needs=("train_config",)),  # reads it all
    Provider("base_model", "envdoctor.facts.train_inputs:probe_base_model", 10.0, owner="config.base_model",
             needs=("train_config",)),
    Provider("model_dir", "envdoctor.facts.model_dir:probe_model_dir", 300.0, owner="model.files"),
    Provider("stack_imports", "envdoctor.facts.stack_imports:probe_stack_imports", "smoke_timeout",
             owner="deep.stack", needs=("python",)),
)}

# Report order of the categories; checks keep their declaration order inside one.
CATEGORIES = ("Python", "System", "WSL", "GPU", "Binaries", "Packages", "Recipe", "Config", "Model", "Deep")

_LOADED: dict[str, Check] = {}


def check_modules() -> tuple:
    """Every module of checks, in declaration order."""
    from envdoctor.checks import (binaries, deep, gpu, host, model_dir, packages, python, recipe, stack,
                                  train_config, train_inputs, wsl)
    return (python, host, wsl, gpu, binaries, packages, recipe, train_config, train_inputs, model_dir, deep, stack)


def load() -> dict[str, Check]:
    """Every check, by id, in report order."""
    if not _LOADED:
        found: dict[str, Check] = {}
        for module in check_modules():
            for fn in vars(module).values():
                c = getattr(fn, "check", None)
                if not isinstance(c, Check) or fn.__module__ != module.__name__:
                    continue  # not a check, or one imported from another module
                if c.id in found and found[c.id] is not c:
                    raise ValueError(f"check id {c.id!r} declared twice")
                found[c.id] = c
        rank = {c: i for i, c in enumerate(CATEGORIES)}
        order = sorted(found.values(), key=lambda c: rank.get(c.category, len(rank)))
        _LOADED.update((c.id, c) for c in order)
    return dict(_LOADED)
