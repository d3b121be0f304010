"""The recipe named by --recipe, as a fact: checks/recipe.py compares the environment with it."""

from __future__ import annotations

from envdoctor.context import Context
from envdoctor.system import System


def probe_recipe(system: System, ctx: Context):
    from envdoctor.recipes import load
    return load(ctx.recipe)
