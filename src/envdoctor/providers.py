"""Fact providers by name. Kept apart from the check modules so the CLI can start the slow probes
before it imports the checks (the Python probe is a subprocess: it overlaps with those imports)."""

from envdoctor.facts.binaries import probe_binaries
from envdoctor.facts.gpu import probe_gpu
from envdoctor.facts.host import probe_host
from envdoctor.facts.imports import probe_imports
from envdoctor.facts.model_dir import probe_model_dir
from envdoctor.facts.python_env import probe_python
from envdoctor.facts.smoke import STAGES, provider_for
from envdoctor.facts.toolkit import probe_toolkit
from envdoctor.facts.torch_build import probe_torch
from envdoctor.facts.train_config import probe_train_config
from envdoctor.facts.train_inputs import probe_base_model, probe_datasets
from envdoctor.facts.wsl import probe_wsl
from envdoctor.registry import provider


def probe_recipe(system, ctx):
    from envdoctor.recipes import load
    return load(ctx.recipe)



provider("host", probe_host, owner="system.os", timeout=10.0)
provider("python", probe_python, owner="python.interpreter", timeout="probe_timeout")
provider("gpu", probe_gpu, owner="gpu.driver", timeout=30.0)
provider("toolkit", probe_toolkit, owner="gpu.nvcc", timeout=30.0)
provider("torch", probe_torch, owner="gpu.torch", timeout=30.0, needs=("python",))
provider("binaries", probe_binaries, owner="binaries.extensions", timeout=30.0, needs=("python", "torch"))
provider("imports", probe_imports, owner="deep.imports", timeout="smoke_timeout", needs=("binaries",))
for _stage in STAGES:
    provider(f"smoke_{_stage}", provider_for(_stage), owner=f"deep.{_stage}", timeout="smoke_timeout",
             needs=("gpu",))
provider("recipe", probe_recipe, owner="recipe.match", timeout=10.0)
provider("wsl", probe_wsl, owner="wsl.version", timeout=30.0)
provider("train_config", probe_train_config, owner="config.valid", timeout=10.0)
provider("datasets", probe_datasets, owner="config.datasets", timeout=120.0, needs=("train_config",))  # reads it all
provider("base_model", probe_base_model, owner="config.base_model", timeout=10.0, needs=("train_config",))
provider("model_dir", probe_model_dir, owner="model.files", timeout=300.0)

from envdoctor.facts.stack_imports import probe_stack_imports  # noqa: E402  (kept apart: one line to merge)
provider("stack_imports", probe_stack_imports, owner="deep.stack", timeout="smoke_timeout", needs=("python",))
