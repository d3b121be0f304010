"""`envdoctor check --recipe NAME`: the environment against a known-good stack."""

from __future__ import annotations

from typing import TYPE_CHECKING

from packaging.requirements import Requirement

from envdoctor import deps
from envdoctor.facts.python_env import PythonEnv
from envdoctor.model import Item, Remedy, Result, Status, from_items
from envdoctor.pins import torch_build_tag
from envdoctor.registry import check

if TYPE_CHECKING:  # annotations only: a plain check never loads the recipes
    from envdoctor.recipes import Recipe


def _item(python: PythonEnv, spec: str) -> Item:
    req = Requirement(spec)
    dist = python.get(req.name)
    if dist is None:
        return Item(Status.FAIL, f"{spec}: not installed")
    version = deps.parse_version(dist.version)
    if version is None or not req.specifier.contains(version, prereleases=True):
        return Item(Status.FAIL, f"{spec}: {dist.version} is installed")
    return Item(Status.OK, f"{spec}: {dist.version}")


@check("recipe.match", "Recipe", "Recipe", "installed versions against the recipe named by --recipe",
       needs=("recipe", "python"), option="recipe")
def match(recipe: Recipe, python: PythonEnv) -> Result:
    items = [_item(python, recipe.torch_spec)]
    torch = python.get("torch")
    tag = torch_build_tag(torch.version) if torch else None
    if torch and recipe.torch_index not in ("pypi",) and tag and tag != recipe.torch_index:
        items.append(Item(Status.FAIL, f"torch build {tag}, the recipe's is {recipe.torch_index}"))
    for spec in recipe.companions + recipe.packages + recipe.build:
        items.append(_item(python, spec))
    bad = [i for i in items if i.status != Status.OK]
    return from_items(items, f"matches {recipe.name}: {len(items)} pins", f"{len(bad)} of {len(items)} pins of "
                      f"{recipe.name} differ",
                      Remedy(f"envdoctor install --recipe {recipe.name} --venv ~/.venvs/{recipe.name}",
                             "Build a fresh venv from the recipe (your current one stays as it is)."))
