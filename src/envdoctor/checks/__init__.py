"""Checks judge facts. Each module registers its checks in envdoctor.registry."""

from envdoctor import providers  # noqa: F401  (the facts the checks need)
from envdoctor.checks import binaries, deep, gpu, host, packages, python, recipe, train_config, wsl  # noqa: F401  (registration)
