"""Which copy of a distribution Python imports when several are on sys.path, and why.

Several copies are only a problem when they compete for one import:
- two metadata folders in one site-packages (an interrupted upgrade): the files may be a mix;
- a folder put ahead of site-packages by a `.pth` line or PYTHONPATH holds another copy: Python imports
  that one while pip manages (and upgrades) the one in site-packages, so upgrades never take effect.
A venv made with --system-site-packages sees the system's copies *after* its own: its own copy is the
one imported and the system copy is simply hidden. Nothing competes; that is not a finding."""

from __future__ import annotations

import os
from dataclasses import dataclass

from envdoctor.facts.python_env import Distribution, PythonEnv

SAME_DIR = "same-dir"          # two dist-infos in one folder
SYSTEM_SITE = "system-site"    # a venv's own copy hides the system site's copy
PTH = "pth"                    # a .pth line put the imported copy's folder ahead of site-packages
PYTHONPATH = "pythonpath"      # PYTHONPATH did
OTHER = "other"                # user site and everything else: the first on sys.path wins


@dataclass
class Shadow:
    kind: str
    active: Distribution
    others: list[Distribution]
    pth: dict | None = None    # the .pth line (file, line, text, kind, folder) for PTH


def _real(p: str | None) -> str:
    return os.path.realpath(p) if p else ""


def own_sites(python: PythonEnv) -> set[str]:
    return {_real(python.purelib), _real(python.platlib)}


def _under(path: str, prefix: str) -> bool:
    path, prefix = _real(path), _real(prefix)
    return bool(prefix) and (path == prefix or path.startswith(prefix.rstrip(os.sep) + os.sep))


def pth_source(python: PythonEnv, folder: str) -> dict | None:
    """The .pth line that puts `folder` on sys.path: a path line naming it, or an import line whose text
    holds it (`import sys; sys.path.insert(0, '/opt/old')`)."""
    want = _real(folder)
    for line in python.pth:
        if line.get("kind") == "path" and _real(line.get("folder")) == want:
            return line
    for line in python.pth:
        if line.get("kind") == "import" and (folder in line["text"] or want in line["text"]):
            return line
    return None


def classify(python: PythonEnv, dists: list[Distribution]) -> Shadow:
    active, others = dists[0], dists[1:]
    if any(d.location == active.location for d in others) or len({d.location for d in others}) < len(others):
        return Shadow(SAME_DIR, active, others)
    mine = own_sites(python)
    if _real(active.location) in mine:
        # The system site lives under the base interpreter's prefix; a user site (~/.local) does not, and
        # with --system-site-packages it comes *ahead* of the venv's own: that one would be imported.
        if python.in_venv and all(_under(d.location, python.base_prefix) and not _under(d.location, python.prefix)
                                  for d in others):
            return Shadow(SYSTEM_SITE, active, others)
        return Shadow(OTHER, active, others)
    if any(_real(d.location) in mine for d in others):
        line = pth_source(python, active.location)
        if line is not None:
            return Shadow(PTH, active, others, line)
        if any(_real(p) == _real(active.location) for p in python.pythonpath):
            return Shadow(PYTHONPATH, active, others)
    return Shadow(OTHER, active, others)


def shadowed_by_path(python: PythonEnv, key: str) -> str | None:
    """Why installing `key` with pip cannot help: the imported copy sits in a folder a .pth line or
    PYTHONPATH puts ahead of site-packages. None when pip manages the imported copy."""
    dists = python.installs(key)
    if len(dists) < 2:
        return None
    s = classify(python, dists)
    if s.kind == PTH:
        return (f"the {s.active.label} that Python imports is in {s.active.location}, put ahead of site-packages by "
                f"{s.pth['file']} line {s.pth['line']}: remove that line (see packages.duplicates; "
                f"`envdoctor fix packages.pth-edit`); pip cannot replace that copy")
    if s.kind == PYTHONPATH:
        return (f"the {s.active.label} that Python imports is in {s.active.location}, on PYTHONPATH: remove it "
                "from PYTHONPATH; pip cannot replace that copy")
    return None
