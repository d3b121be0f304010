"""Leftovers of interrupted pip runs: `~orch/` and `~orch-2.8.0.dist-info` in site-packages.

pip renames what it uninstalls to `~` plus the name without its first letter, and deletes it once the
new files are in place; an interrupted run leaves both. They are not installs (no duplicate finding
counts them), pip ignores their invalid names (so `pip uninstall` never removes them), and nothing
imports them: the remedy deletes every one of them, folder and metadata alike, in one command."""

from __future__ import annotations

from pathlib import PurePosixPath

from envdoctor.facts.python_env import PythonEnv
from envdoctor.model import Item, Status

def leftovers_by_site(python: PythonEnv) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for path in python.strays:
        out.setdefault(str(PurePosixPath(path).parent), []).append(path)
    return out


def remove_command(paths: list[str]) -> str:
    from envdoctor.repair.requests import RemoveLeftovers
    return RemoveLeftovers(tuple(paths)).command("")


def leftover_items(python: PythonEnv) -> list[Item]:
    items = []
    for site, paths in sorted(leftovers_by_site(python).items()):
        from envdoctor.repair.requests import RemoveLeftovers, remedy  # only with leftovers to remove
        names = [PurePosixPath(p).name for p in paths]
        items.append(Item(Status.WARN, f"leftovers of an interrupted pip run in {site}: {', '.join(names)}",
                          ("pip renames what it replaces to ~name (metadata too) and deletes it at the end; "
                           "these were never deleted. Nothing imports them, and pip ignores them.",),
                          remedy(RemoveLeftovers(tuple(paths)), python,
                                 "Delete every leftover, folders and metadata.")))
    return items
