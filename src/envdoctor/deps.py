"""Requirement evaluation over installed distributions: markers, extras (transitively), versions.

Pure logic over PythonEnv facts; `packages.requirements` turns its answers into findings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from packaging.markers import InvalidMarker, UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from envdoctor.facts.python_env import Distribution, PythonEnv


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


_EXTRA_ONLY = re.compile(r";.*\bextra\s*==")


def _only_for_extras(raw: str) -> bool:
    """`x; extra == "y"` (in a conjunction) can never apply without an extra: skip parsing it until
    that extra is requested. Most requirements of big packages are of this kind."""
    return bool(_EXTRA_ONLY.search(raw)) and " or " not in raw and "!=" not in raw.split(";", 1)[1]


@dataclass
class Analysis:
    needs: list[Need]
    bad: list[BadRequirement]
    unmet: list[Unmet]


def analyze(env: PythonEnv) -> Analysis:
    """Requirements of the environment, computed once per PythonEnv."""
    cached = env.cache.get("deps")
    if cached is None:
        needs, bad = applicable_needs(env)
        cached = env.cache["deps"] = Analysis(needs, bad, _unmet(env, needs))
    return cached


def applicable_needs(env: PythonEnv) -> tuple[list[Need], list[BadRequirement]]:
    """Every requirement that applies in this environment.

    Base requirements of every distribution, plus the requirements of each extra that some installed
    distribution asks for (`peft[test]`), followed until nothing new is requested.
    """
    bad: list[BadRequirement] = []
    parsed: dict[tuple[int, str], Requirement | None] = {}

    def parse(d: Distribution, raw: str) -> Requirement | None:
        key = (id(d), raw)
        if key not in parsed:
            try:
                parsed[key] = Requirement(raw)
            except InvalidRequirement as exc:
                parsed[key] = None
                bad.append(BadRequirement(d, raw, str(exc).splitlines()[0]))
        return parsed[key]

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
                for raw in dist.requires:
                    if (id(dist), raw) in needs or (not extra and _only_for_extras(raw)):
                        continue
                    req = parse(dist, raw)
                    if req is None or not _applies(req, env.markers, extra):
                        continue
                    needs[(id(dist), raw)] = Need(dist, req, extra or None)
                    target = canonicalize_name(req.name)
                    new = {canonicalize_name(e) for e in req.extras} - requested.get(target, set())
                    if target in requested and new:
                        requested[target] |= new
                        changed = True
    # Unparseable requirements are reported once, whether or not an extra asked for them.
    for d in env.distributions:
        if d is active.get(d.key):
            for raw in d.requires:
                if not _only_for_extras(raw):
                    parse(d, raw)
    return list(needs.values()), bad


def _unmet(env: PythonEnv, needs: list[Need]) -> list[Unmet]:
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
    return out


def combined_spec(env: PythonEnv, name: str) -> tuple[SpecifierSet, list[Need]]:
    """Everything installed that constrains `name`, and the intersection of their specifiers."""
    needs = analyze(env).needs
    mine = [n for n in needs if canonicalize_name(n.req.name) == canonicalize_name(name)]
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
