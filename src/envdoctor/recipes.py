"""Recipes: known-good stacks as YAML files in recipes/, validated against a small schema.

Validation reports every error at once, each naming the file, the key and what was expected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from envdoctor import textfile
from envdoctor.assets import asset
from envdoctor.errors import EnvdoctorError

INDEX = re.compile(r"^(pypi|cpu|cu\d{3}|rocm\d+(\.\d+)*|xpu)$")
ARCH = re.compile(r"^sm_\d{2,3}a?$")
TOP_KEYS = {"name", "description", "python", "gpu", "torch", "packages", "build"}


class RecipeError(EnvdoctorError):
    exit_code = 2


@dataclass
class Recipe:
    name: str
    description: str
    path: str
    header: str                      # the file's leading comment: when to use it
    torch_version: str
    torch_index: str
    companions: list[str] = field(default_factory=list)
    packages: list[str] = field(default_factory=list)
    build: list[str] = field(default_factory=list)
    python: str | None = None
    archs: list[str] = field(default_factory=list)
    min_driver: str | None = None

    def to_dict(self) -> dict:
        from dataclasses import asdict
        return asdict(self)

    @property
    def index_url(self) -> str | None:
        return None if self.torch_index == "pypi" else f"https://download.pytorch.org/whl/{self.torch_index}"

    @property
    def torch_spec(self) -> str:
        return f"torch=={self.torch_version}"


def _header(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return "\n".join(lines)


def validate(path: Path) -> tuple[Recipe | None, list[str]]:
    """(the recipe, []) or (None, every error found)."""
    import yaml
    where = str(path)
    try:
        text = textfile.read(path, "a YAML recipe")
    except OSError as exc:
        return None, [f"{where}: cannot read: {exc.strerror}"]
    except textfile.NotText as exc:
        return None, [str(exc)]
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        return None, [f"{where}: not valid YAML: nested too deeply"]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        return None, [f"{where}: not valid YAML{at}: {getattr(exc, 'problem', exc)}"]
    if not isinstance(data, dict):
        return None, [f"{where}: expected a mapping of keys (name, torch, packages, …), got {type(data).__name__}"]
    errors: list[str] = []

    def err(key: str, expected: str, got) -> None:
        errors.append(f"{where}: {key}: expected {expected}, got {got!r}")

    for key in sorted(set(data) - TOP_KEYS, key=str):
        errors.append(f"{where}: {key}: unknown key (known: {', '.join(sorted(TOP_KEYS))})")
    name, desc = data.get("name"), data.get("description")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", name or ""):
        err("name", "a lower-case name like 'blackwell-cu128'", name)
    elif name != path.stem:
        err("name", f"the file name '{path.stem}'", name)
    if not isinstance(desc, str) or not desc:
        err("description", "one line of text", desc)
    if data.get("python") is not None:
        try:
            SpecifierSet(str(data["python"]))
        except InvalidSpecifier:
            err("python", "a version specifier like '>=3.10,<3.14'", data["python"])
    torch = data.get("torch")
    version = index = None
    companions: list[str] = []
    if not isinstance(torch, dict):
        err("torch", "a mapping with version and index", torch)
    else:
        version, index = str(torch.get("version", "")), torch.get("index")
        try:
            Version(version)
        except InvalidVersion:
            err("torch.version", "a PEP 440 version like '2.8.0'", torch.get("version"))
        if not isinstance(index, str) or not INDEX.match(index):
            err("torch.index", "pypi, cpu, cuXYZ or rocmX.Y", index)
        companions = _requirements(torch.get("companions", []), "torch.companions", err)
        for key in sorted(set(torch) - {"version", "index", "companions"}, key=str):
            errors.append(f"{where}: torch.{key}: unknown key (known: companions, index, version)")
    packages = _requirements(data.get("packages", []), "packages", err)
    build = _requirements(data.get("build", []), "build", err)
    gpu = data.get("gpu") or {}
    archs: list[str] = []
    if not isinstance(gpu, dict):
        err("gpu", "a mapping with archs and min_driver", gpu)
        gpu = {}
    for i, a in enumerate(gpu.get("archs", []) if isinstance(gpu.get("archs", []), list) else [None]):
        if not isinstance(a, str) or not ARCH.match(a):
            err(f"gpu.archs[{i}]", "an arch like 'sm_90'", a)
        else:
            archs.append(a)
    if gpu.get("min_driver") is not None:
        try:
            Version(str(gpu["min_driver"]))
        except InvalidVersion:
            err("gpu.min_driver", "a driver version like '570.26'", gpu["min_driver"])
    if errors:
        return None, errors
    return Recipe(name, desc, where, _header(text), version, index, companions, packages, build,
                  data.get("python"), archs, str(gpu["min_driver"]) if gpu.get("min_driver") else None), []


def _requirements(value, key: str, err) -> list[str]:
    if not isinstance(value, list):
        err(key, "a list of requirements", value)
        return []
    out = []
    for i, item in enumerate(value):
        try:
            req = Requirement(str(item))
            if not isinstance(item, str) or not req.specifier:
                raise InvalidRequirement("no version")
            out.append(item)
        except InvalidRequirement:
            err(f"{key}[{i}]", "a pinned requirement like 'peft==0.17.1'", item)
    return out


def bundled() -> dict[str, Path]:
    return {p.stem: p for p in sorted(asset("recipes").glob("*.yaml"))}


def load(name_or_path: str) -> Recipe:
    path = Path(name_or_path)
    if not path.suffix:
        found = bundled()
        if name_or_path not in found:
            raise RecipeError(f"no recipe named {name_or_path!r}; recipes: {', '.join(found)}")
        path = found[name_or_path]
    recipe, errors = validate(path)
    if errors:
        raise RecipeError("\n".join(errors))
    return recipe
