"""Package health: requirements (markers, extras, versions), duplicate installs, broken metadata,
companion versions (torchvision / torchaudio / torchao against torch), pip itself."""

from __future__ import annotations

import shlex

from packaging.utils import canonicalize_name
from packaging.version import Version

from envdoctor import deps, tables
from envdoctor.facts.python_env import Distribution, PythonEnv
from envdoctor.model import Item, Remedy, Result, Status, from_items, ok, warn
from envdoctor.pins import index_url, pip_install, torch_build_tag
from envdoctor.registry import check
from envdoctor.leftovers import leftover_items
from envdoctor.shadow_items import shadow_item
from envdoctor.shadowing import classify, shadowed_by_path

DAMAGED = "damaged install: missing"   # target/probe.py's MISSING: files its RECORD lists are gone


def _why(u: deps.Unmet) -> str:
    via = f" (through its extra [{u.need.via_extra}])" if u.need.via_extra else ""
    have = "it is not installed" if u.installed is None else f"{u.installed_version} is installed"
    return f"{u.need.requirer.label} requires {u.need.req}{via}, but {have}"


def _spec_for(env: PythonEnv, name: str) -> tuple[str | None, str | None]:
    """(requirement to install that satisfies every installed requirer, or why none exists)."""
    spec, needs = deps.combined_spec(env, name)
    clash = deps.contradictory_pins(needs)
    if clash:
        a, b = clash
        return None, (f"no version satisfies both {a.requirer.label} ({a.req.specifier}) and "
                      f"{b.requirer.label} ({b.req.specifier}): one of them must change")
    extras = sorted({e for n in needs for e in n.req.extras})
    return f"{needs[0].req.name}{'[' + ','.join(extras) + ']' if extras else ''}{spec}", None


@check("packages.requirements", "Package requirements", "Packages",
       "every installed distribution's requirements, with markers and extras, against what is installed",
       needs=("python",))
def requirements(python: PythonEnv) -> Result:
    analysis = deps.analyze(python)
    unmet, bad = analysis.unmet, analysis.bad
    items, install, torch_changes, details = [], [], False, []
    by_target: dict[str, list[deps.Unmet]] = {}
    for u in unmet:
        by_target.setdefault(canonicalize_name(u.need.req.name), []).append(u)
    for key, group in sorted(by_target.items()):
        shadow = shadowed_by_path(python, key)
        if shadow:  # pip would act on the copy in site-packages, not the one imported: no pip remedy
            items += [Item(Status.FAIL, _why(u), (shadow,), Remedy(text=shadow)) for u in group]
            continue
        # Fix requests load only where a remedy is built: a healthy environment never pays for them.
        from envdoctor.repair.requests import InstallSpecs, pip_remedy, remedy as fix_remedy, torch_pin
        spec, conflict = _spec_for(python, group[0].need.req.name)
        torch_changes |= key == "torch"
        for u in group:
            if spec and key != "torch":
                fix = fix_remedy(InstallSpecs((spec,), torch_pin(python)), python)
            elif spec:   # torch itself: no fix (its companions must follow), the command only
                fix = pip_remedy(python, pip_install(python, [spec], keep_torch=False))
            else:
                fix = Remedy(None, conflict)
            items.append(Item(Status.FAIL, _why(u), (conflict,) if conflict else (), fix))
        if spec:
            install.append(spec)
    for b in bad:
        items.append(Item(Status.WARN, f"{b.requirer.label} has a requirement pip cannot parse: {b.raw!r}",
                          (b.error,)))
    remedy = None
    if install:
        tag = torch_build_tag(python.get("torch").version) if torch_changes and python.get("torch") else None
        remedy = (pip_remedy(python, pip_install(python, install, keep_torch=False, index_tag=tag),
                             "This changes torch itself; its companions must follow.") if torch_changes else
                  fix_remedy(InstallSpecs(tuple(install), torch_pin(python)), python,
                             "torch stays pinned at the installed build."))
    n_missing = sum(1 for u in unmet if u.installed is None)
    n_conflict = len(unmet) - n_missing
    parts = [f"{n_missing} missing" if n_missing else "", f"{n_conflict} version conflicts" if n_conflict else "",
             f"{len(bad)} unparseable" if bad else ""]
    summary = "requirements: " + ", ".join(p for p in parts if p)
    return from_items(items, f"{len(python.distributions)} distributions, every requirement met",
                      summary, remedy, details)


@check("packages.duplicates", "Duplicate installs", "Packages",
       "distributions installed more than once on sys.path (stale dist-info, user site shadowing)",
       needs=("python",))
def duplicates(python: PythonEnv) -> Result:
    items = [shadow_item(python, classify(python, dists)) for key, dists in sorted(python.by_key().items())
             if len(dists) > 1]
    n = sum(1 for i in items if i.status != Status.OK)
    return from_items(items, "no distribution installed twice where two copies compete for one import",
                      f"{n} distributions installed twice")


@check("packages.metadata", "Package metadata", "Packages",
       "unreadable or incomplete metadata and leftovers of interrupted pip runs", needs=("python",))
def metadata(python: PythonEnv) -> Result:
    items = []
    for d in python.distributions:
        problems = list(d.problems)
        if d.version and deps.parse_version(d.version) is None:
            problems.append(f"version {d.version!r} is not a valid PEP 440 version")
        damaged = [p for p in problems if p.startswith(DAMAGED)]
        if problems:  # fix requests load for a broken install only
            from envdoctor.repair.requests import ReinstallTorch, pip_line, pip_remedy, remedy as fix_remedy
        if damaged and d.key == "torch" and d.version:
            # Files gone from an install whose metadata is intact: the same version again, over it, is the
            # fix (--no-deps: its dependencies are not the damaged part).
            items.append(Item(Status.FAIL, f"{d.label}: {damaged[0]}", (d.path, *problems[1:]),
                              fix_remedy(ReinstallTorch((f"torch=={d.version}",), force=True), python,
                                         f"Reinstall torch {d.version} over its damaged files (the same version "
                                         "and build; nothing else changes).")))
            continue
        if problems:
            name = d.name or d.dir_name or d.path
            version = d.version or d.dir_version
            items.append(Item(Status.FAIL, f"{name}: broken metadata in {d.path}", tuple(problems),
                              pip_remedy(python, pip_line(python.executable, [f"{name}=={version}"],
                                                          options=["--force-reinstall", "--no-deps"]),
                                         "Reinstall it over the broken metadata.") if version else
                              Remedy(f"rm -rf -- {shlex.quote(d.path)}", "Remove the broken metadata.")))
        elif d.kind == "dist-info" and d.installer == "pip" and d.has_record is False:
            items.append(Item(Status.WARN, f"{d.label}: no RECORD file, pip cannot uninstall it", (d.path,)))
    items += leftover_items(python)
    return from_items(items, f"metadata of {len(python.distributions)} distributions readable",
                      f"{len(items)} metadata problems")


def _release(v: str | None) -> tuple[int, ...] | None:
    parsed = deps.parse_version(v)
    return parsed.release if parsed else None


def _companion_item(python: PythonEnv, torch: Distribution, name: str, want: str | None) -> Item | None:
    comp = python.get(name)
    if comp is None:
        return None
    crel, trel = _release(comp.version), _release(torch.version)
    tminor = ".".join(map(str, trel[:2]))
    tag = torch_build_tag(torch.version)

    def fix() -> Remedy:  # built for a failing item only: a matching companion never loads the fix requests
        from envdoctor.repair.requests import AlignCompanions, pip_line, pip_remedy, remedy as fix_remedy, torch_pin
        return (fix_remedy(AlignCompanions((f"{name}=={want}.*",), index_url(tag), True, torch_pin(python)), python,
                           f"Install the {name} built for torch {tminor}" + (f" ({tag})" if tag else "") + ".")
                if want else pip_remedy(python, pip_line(python.executable, [name], options=["-y"], verb="uninstall"),
                                        f"No {name} release exists for torch {tminor}: remove it or change torch."))
    if want is None:
        return Item(Status.FAIL, f"{comp.label} has no release for torch {torch.version}", (), fix())
    if ".".join(map(str, crel[:2])) != want:
        return Item(Status.FAIL, f"{comp.label} is not built for torch {torch.version} (needs {name} {want}.x)",
                    ("A companion built for another torch fails at import with undefined symbols or "
                     "'operator does not exist'.",), fix())
    ctag = torch_build_tag(comp.version)
    if ctag and tag and ctag != tag:
        return Item(Status.FAIL, f"{comp.label} is a {ctag} build but torch is {tag}",
                    ("Its CUDA kernels link against another CUDA runtime than torch's.",), fix())
    return Item(Status.OK, f"{comp.label} matches torch {torch.version}")


def _ao_fits(row: dict, torch_release: tuple[int, ...]) -> bool:
    """torchao's own list: exact torch releases, or (ABI-stable builds) any torch from a minimum."""
    if "torch_min" in row:
        return torch_release[:3] >= Version(row["torch_min"]).release
    return any(torch_release[:3] == Version(t).release for t in row["torch"])


def _torchao_item(python: PythonEnv, torch: Distribution, table: dict) -> Item | None:
    ao = python.get("torchao")
    if ao is None:
        return None
    arel, trel = _release(ao.version), _release(torch.version)
    row = table.get(".".join(map(str, arel[:3])))
    if row is None:
        return Item(Status.SKIP, f"{ao.label}: not in envdoctor's torchao table")
    if _ao_fits(row, trel):
        return Item(Status.OK, f"{ao.label} matches torch {torch.version}")
    wanted = [v for v, r in table.items() if not v.startswith("_") and _ao_fits(r, trel)]
    supports = row.get("torch") or [f">= {row['torch_min']}"]
    if wanted and torch_build_tag(torch.version) == "cpu":
        # PyPI's torchao platform wheel is a CUDA build: beside a CPU torch, its pure-Python wheel.
        from envdoctor.cpu_torch import pure_wheel_remedy
        remedy = pure_wheel_remedy(python, "torchao", wanted[-1])
    else:
        from envdoctor.repair.requests import AlignCompanions, remedy as fix_remedy, torch_pin
        remedy = (fix_remedy(AlignCompanions((f"torchao=={wanted[-1]}",), torch_pin=torch_pin(python)), python,
                             f"torchao {wanted[-1]} is built for torch {torch.version}.") if wanted else
                  Remedy(text=f"No torchao release in the table supports torch {torch.version}."))
    return Item(Status.WARN, f"{ao.label} is built for torch {', '.join(supports)}, not {torch.version}",
                ("torchao then skips its C++ extensions ('Skipping import of cpp extensions') and runs "
                 "Python-only: slower, and some quantization paths fail.",), remedy)


@check("packages.companions", "torch companions", "Packages",
       "torchvision, torchaudio and torchao versions and CUDA builds against the installed torch",
       needs=("python",))
def companions(python: PythonEnv) -> Result:
    torch = python.get("torch")
    if torch is None or _release(torch.version) is None:
        return ok("torch is not installed; nothing to match")
    table = tables.load("companions")
    minor = ".".join(map(str, _release(torch.version)[:2]))
    row = table["by_torch_minor"].get(minor)
    items = []
    for name in ("torchvision", "torchaudio"):
        if row is None:
            if python.get(name):
                items.append(Item(Status.SKIP, f"{python.get(name).label}: torch {minor} is not in the table"))
            continue
        item = _companion_item(python, torch, name, row[name])
        if item:
            items.append(item)
    ao = _torchao_item(python, torch, table["torchao"])
    if ao:
        items.append(ao)
    found = [i.message for i in items if i.status == Status.OK]
    ok_msg = "; ".join(found) if found else f"no companions installed beside torch {torch.version}"
    problems = [i for i in items if i.status in (Status.FAIL, Status.WARN)]
    return from_items(items, ok_msg, f"{len(problems)} companion(s) do not match torch {torch.version}")


@check("packages.pip", "pip", "Packages", "pip is installed in the target environment (fixes use it)",
       needs=("python",))
def pip(python: PythonEnv) -> Result:
    found = python.get("pip")
    if found is None:
        return warn("pip is not installed in the target environment",
                    ["envdoctor's fixes and every install command use `python -m pip`."],
                    Remedy(f"{python.executable} -m ensurepip --upgrade"))
    return ok(f"pip {found.version}")
