"""The one registry: every check and every fact provider, by id."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from envdoctor.model import Result


@dataclass(frozen=True)
class Check:
    id: str                 # stable dotted id, e.g. "packages.requirements"
    title: str
    category: str
    looks_at: str           # one line for `envdoctor checks`
    needs: tuple[str, ...]  # fact providers; their facts are passed as keyword arguments
    fn: Callable[..., Result]
    timeout: float = 10.0
    option: str | None = None  # runs only with this CLI option ("deep", "recipe") or when named explicitly


@dataclass(frozen=True)
class Provider:
    name: str
    fn: Callable            # (system, ctx, **facts of `needs`) -> facts
    timeout: float | str    # seconds, or the name of a Context field (plus a margin)
    owner: str              # the check that reports this provider's failure as a failure
    needs: tuple[str, ...] = ()  # other providers whose facts this one reads


CHECKS: dict[str, Check] = {}
PROVIDERS: dict[str, Provider] = {}


def check(id: str, title: str, category: str, looks_at: str, needs: tuple[str, ...] = (),
          timeout: float = 10.0, option: str | None = None):
    def register(fn: Callable[..., Result]) -> Callable[..., Result]:
        if id in CHECKS:
            raise ValueError(f"check id {id!r} registered twice")
        CHECKS[id] = Check(id, title, category, looks_at, tuple(needs), fn, timeout, option)
        return fn
    return register


def provider(name: str, fn: Callable, owner: str, timeout: float | str = 10.0,
             needs: tuple[str, ...] = ()) -> None:
    PROVIDERS[name] = Provider(name, fn, timeout, owner, tuple(needs))


# Report order of the categories; checks keep their registration order inside one.
CATEGORIES = ("Python", "System", "WSL", "GPU", "Binaries", "Packages", "Recipe", "Config", "Model", "Deep")


def load() -> dict[str, Check]:
    """Import the check modules (they register themselves); the registry in report order."""
    from envdoctor import checks  # noqa: F401  (registration side effect)
    rank = {c: i for i, c in enumerate(CATEGORIES)}
    order = sorted(CHECKS.values(), key=lambda c: rank.get(c.category, len(rank)))
    return {c.id: c for c in order}
