"""Requirement evaluation over installed distributions: markers, extras (transitively), versions.

Pure logic over PythonEnv facts; `packages.requirements` turns its answers into findings.
"""

from __future__ import annotations

from dataclasses import dataclass

from packaging.markers import InvalidMarker, UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from envdoctor.facts.python_env import Distribution, PythonEnv, normalize


@dataclass(frozen=True)
class Need:
    """One applicable requirement of one installed distribution."""

    requirer: Distribution
    req: Requirement
    via_extra: str | None          # the requirer's extra that brought it in, if any


@dataclass(frozen=True)
class Unmet:
    need: Need
    installed: Distribution | None  # None: not installed at all
    installed_version: str | None


@dataclass(frozen=True)
class BadRequirement:
    requirer: Distribution
    raw: str
    error: str


def parse_version(v: str | None) -> Version | None:
    try:
        return Version(v) if v else None
    except InvalidVersion:
        return None


def _applies(req: Requirement, markers: dict[str, str], extra: str) -> bool:
    if req.marker is None:
        return extra == ""
    try:
        return req.marker.evaluate({**markers, "extra": extra})
    except (UndefinedComparison, UndefinedEnvironmentName, InvalidMarker):
        return False


def applicable_needs(env: PythonEnv) -> tuple[list[Need], list[BadRequirement]]:
    """Every requirement that applies in this environment.

    Base requirements of every distribution, plus the requirements of each extra that some installed
    distribution asks for (`peft[test]`), followed until nothing new is requested.
    """
    parsed: dict[int, list[tuple[str, Requirement]]] = {}
    bad: list[BadRequirement] = []
    for d in env.distributions:
        reqs = []
        for raw in d.requires:
            try:
                reqs.append((raw, Requirement(raw)))
            except InvalidRequirement as exc:
                bad.append(BadRequirement(d, raw, str(exc).splitlines()[0]))
        parsed[id(d)] = reqs

    active = {key: dists[0] for key, dists in env.by_key().items()}
    requested: dict[str, set[str]] = {key: {""} for key in active}
    needs: dict[tuple[int, str], Need] = {}  # (requirer, raw requirement): first extra that needs it
    done: set[tuple[str, str]] = set()        # (distribution, extra) already expanded
    changed = True
    while changed:
        changed = False
        for key, dist in active.items():
            for extra in sorted(requested[key]):
                if (key, extra) in done:
                    continue
                done.add((key, extra))
                for raw, req in parsed[id(dist)]:
                    if (id(dist), raw) in needs or not _applies(req, env.markers, extra):
                        continue
                    needs[(id(dist), raw)] = Need(dist, req, extra or None)
                    target = normalize(req.name)
                    new = {normalize(e) for e in req.extras} - requested.get(target, set())
                    if target in requested and new:
                        requested[target] |= new
                        changed = True
    return list(needs.values()), bad


def unmet(env: PythonEnv) -> tuple[list[Unmet], list[BadRequirement]]:
    needs, bad = applicable_needs(env)
    out = []
    for need in needs:
        inst = env.get(need.req.name)
        if inst is None:
            out.append(Unmet(need, None, None))
            continue
        version = parse_version(inst.version)
        if version is None:
            continue  # broken metadata: reported by packages.metadata
        if need.req.specifier and not need.req.specifier.contains(version, prereleases=True):
            out.append(Unmet(need, inst, inst.version))
    return out, bad


def combined_spec(env: PythonEnv, name: str) -> tuple[SpecifierSet, list[Need]]:
    """Everything installed that constrains `name`, and the intersection of their specifiers."""
    needs, _ = applicable_needs(env)
    mine = [n for n in needs if normalize(n.req.name) == normalize(name)]
    spec = SpecifierSet()
    for n in mine:
        spec &= n.req.specifier
    return spec, mine


def contradictory_pins(needs: list[Need]) -> tuple[Need, Need] | None:
    """Two requirers whose specifiers no version can satisfy, found through their `==` pins."""
    for a in needs:
        for spec in a.req.specifier:
            if spec.operator != "==" or "*" in spec.version:
                continue
            pinned = parse_version(spec.version)
            for b in needs:
                if b is not a and pinned is not None and not b.req.specifier.contains(pinned, prereleases=True):
                    return a, b
    return None
