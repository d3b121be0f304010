"""Keeping torch where it is: the pin and index URL that package remedies carry."""

from __future__ import annotations

import re

from envdoctor.facts.python_env import PythonEnv

PYTORCH_INDEX = "https://download.pytorch.org/whl/{tag}"
_BUILD_TAG = re.compile(r"^(cu\d+|cpu|rocm[\d.]+|xpu)$")


def torch_build_tag(version: str | None) -> str | None:
    """The local build tag of a torch version: "2.8.0+cu128" -> "cu128"; None for PyPI's plain builds."""
    if not version or "+" not in version:
        return None
    tag = version.split("+", 1)[1]
    return tag if _BUILD_TAG.match(tag) else None


def index_url(tag: str | None) -> str | None:
    return PYTORCH_INDEX.format(tag=tag) if tag else None


def torch_pin(env: PythonEnv) -> list[str]:
    """Extra pip arguments that keep the installed torch exactly as it is."""
    torch = env.get("torch")
    if torch is None or not torch.version:
        return []
    return [f"torch=={torch.version}"]


def pip_install(env: PythonEnv, specs: list[str], keep_torch: bool = True,
                index_tag: str | None = None) -> str:
    """A pip command line for the target interpreter, quoting each requirement."""
    from envdoctor.repair.requests import spec_quote
    args = list(specs) + (torch_pin(env) if keep_torch else [])
    cmd = env.pip_command() + " " + " ".join(map(spec_quote, args))
    url = index_url(index_tag)
    if url:
        # The PyTorch index holds the build-tagged wheels; PyPI stays reachable for the rest.
        cmd += f" --extra-index-url {url}"
    return cmd
