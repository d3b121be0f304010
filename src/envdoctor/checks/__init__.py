"""Checks judge facts. Each module registers its checks in envdoctor.registry."""

from envdoctor import providers  # noqa: F401  (the facts the checks need)
from envdoctor.checks import (binaries, deep, gpu, host, model_dir, packages, python, recipe, stack,  # noqa: F401
                              train_config, train_inputs, wsl)  # (registration)
