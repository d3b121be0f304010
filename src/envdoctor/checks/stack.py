"""Deep mode: the training stack imports for real (`deep.stack`). A failing import is named with the
module whose code raised, the exact error and the two versions that do not fit; a table of verified
pairs names the release that fixes a known one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name as normalize

from envdoctor import deps, tables
from envdoctor.facts.python_env import PythonEnv
from envdoctor.model import Item, Remedy, Result, Status, from_items, skip
from envdoctor.registry import check

if TYPE_CHECKING:  # annotations only: the facts' modules load when their checks run
    from envdoctor.facts.stack_imports import StackImport, StackImports


def _top(module: str | None) -> str | None:
    return module.split(".")[0] if module else None


def other_package(r: StackImport, python: PythonEnv):
    """The installed distribution the error points at, other than the one imported: the module an
    ImportError names, else the package whose code raised."""
    for module in (r.missing, r.raised_in):
        top = _top(module)
        if top and normalize(top) != normalize(r.dist):
            dist = python.get(top) or python.get(top.replace("_", "-"))
            if dist is not None:
                return dist
    return None


def known_pair(dist: str, version: str | None, python: PythonEnv) -> tuple[dict, object] | None:
    """(the table row, the installed distribution it needs a newer release of) for a verified pair."""
    v = deps.parse_version(version)
    for row in tables.load("stack_pairs")["pairs"]:
        if normalize(row["package"]) != normalize(dist) or v is None:
            continue
        try:
            if v not in SpecifierSet(row["versions"], prereleases=True):
                continue
        except InvalidSpecifier:
            continue
        need = python.get(row["needs"])
        nv = deps.parse_version(need.version) if need else None
        if need is not None and nv is not None and nv not in SpecifierSet(row["needs_spec"], prereleases=True):
            return row, need
    return None


def item_for(r: StackImport, python: PythonEnv) -> Item:
    from envdoctor.repair.requests import pip_line, pip_remedy, torch_pin
    label = f"{r.dist} {r.version or '?'}"
    if r.ok:
        return Item(Status.OK, f"import {r.dist}: ok ({r.seconds:.1f} s)")
    details = [r.error or "failed without an error message"]
    if r.raised_in:
        details.append(f"raised in {r.raised_in}" + (f", line {r.line}" if r.line else ""))
    pair = known_pair(r.dist, r.version, python)
    other = pair[1] if pair else other_package(r, python)
    if other is not None:
        details.append(f"version pair: {label} beside {other.name} {other.version}")
    if pair:
        row, need = pair
        need_spec = f"{row['needs']}{row['needs_spec']}"
        details.append(f"verified: {row['verified']}")
        remedy = pip_remedy(python, pip_line(python.executable, [row["install"]], pin=torch_pin(python)),
                            f"{row['package']} {row['versions']} needs {need_spec} (its metadata does not say so); "
                        f"this installs {row['install']} and keeps torch as it is.")
    elif other is not None:
        remedy = Remedy(text=f"{label} and {other.name} {other.version} do not work together, and envdoctor's "
                             f"table of verified pairs does not know the release that fixes it: no automatic "
                             f"fix. Upgrade {other.name} (or install the {r.dist} release made for "
                             f"{other.name} {other.version}) and re-run `envdoctor check --deep`.")
    else:
        remedy = Remedy(text=f"The error above comes from {r.raised_in or r.dist}; no automatic fix is known. "
                             f"Reinstall {r.dist} if its files are damaged, else read the error.")
    beside = f" beside {other.name} {other.version}" if other is not None else ""
    return Item(Status.FAIL, f"import {r.dist} fails: {label}{beside}", tuple(details), remedy)


@check("deep.stack", "Training stack imports", "Deep",
       "transformers, peft, trl, accelerate, datasets, bitsandbytes, torchao and axolotl (those installed) "
       "imported for real, each in its own subprocess, in parallel; no GPU needed",
       needs=("stack_imports", "python"), option="deep", timeout=5.0)
def stack(stack_imports: StackImports, python: PythonEnv) -> Result:
    if not stack_imports.results:
        return skip("none of the training stack is installed")
    items = [item_for(r, python) for r in stack_imports.results]
    bad = [i for i in items if i.status == Status.FAIL]
    names = ", ".join(r.dist for r in stack_imports.results)
    return from_items(items, f"{len(items)} packages import: {names}",
                      f"{len(bad)} of {len(items)} training-stack imports fail: "
                      + ", ".join(r.dist for r in stack_imports.results if not r.ok))
