"""The result model: what a check returns. Plain data; rendering lives in report/."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Status(str, enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"
    ERROR = "error"


# Worst first: used to fold several items into one status.
SEVERITY = {Status.ERROR: 4, Status.FAIL: 3, Status.WARN: 2, Status.OK: 1, Status.SKIP: 0}


def failing_statuses(strict: bool = False) -> frozenset[Status]:
    """The statuses a run fails on — the exit code, JUnit failures, the train preflight, a fix's verdict,
    `report merge` — one set for all of them; --strict adds warnings."""
    return frozenset({Status.FAIL, Status.ERROR} | ({Status.WARN} if strict else set()))


def worst(statuses) -> Status:
    statuses = list(statuses)
    return max(statuses, key=SEVERITY.__getitem__) if statuses else Status.OK


@dataclass(frozen=True)
class Remedy:
    """How to fix a problem: a command to run and/or text, plus a fix id when `envdoctor fix` has one.

    `request` is the typed fix request (envdoctor.repair.requests) the command was printed from and the fix
    plans from: one source for both. A fix id without a request only points at a fix another finding
    computes (host.memory -> wsl.memory)."""

    command: str | None = None
    text: str | None = None
    fix_id: str | None = None
    request: object | None = None

    def __post_init__(self) -> None:
        if self.request is None:
            return
        own = getattr(self.request, "fix_id", None)
        if own is None or not hasattr(self.request, "to_dict"):
            raise TypeError(f"Remedy.request must be a fix request, not {type(self.request).__name__}")
        if self.fix_id is None:
            object.__setattr__(self, "fix_id", own)
        elif self.fix_id != own:
            raise ValueError(f"fix id {self.fix_id} with a {own} request")

    @property
    def params(self) -> dict | None:
        """The request as plain data: the report's `params` (docs/report.schema.json)."""
        return self.request.to_dict() if self.request is not None else None

    def to_dict(self) -> dict:
        return {"command": self.command, "text": self.text, "fix_id": self.fix_id, "params": self.params}


@dataclass(frozen=True)
class Item:
    """One problem (or observation) inside a result, e.g. one unmet requirement."""

    status: Status
    message: str
    details: tuple[str, ...] = ()
    remedy: Remedy | None = None

    def to_dict(self) -> dict:
        return {
            "status": self.status.value,
            "message": self.message,
            "details": list(self.details),
            "remedy": self.remedy.to_dict() if self.remedy else None,
        }


@dataclass
class Result:
    """What one check concluded. Non-ok results carry a message, details and a remedy."""

    status: Status
    message: str
    details: list[str] = field(default_factory=list)
    remedy: Remedy | None = None
    items: list[Item] = field(default_factory=list)
    # Filled in by the engine.
    check_id: str = ""
    title: str = ""
    category: str = ""
    duration_s: float = 0.0
    traceback: str | None = None
    quiet: bool = False     # a skip that is not news (WSL checks off WSL): text shows it only with -v
    data: dict | None = None  # numbers behind the message, for the JSON report (config.memory: bytes)

    def to_dict(self) -> dict:
        return {
            "id": self.check_id,
            "title": self.title,
            "category": self.category,
            "status": self.status.value,
            "message": self.message,
            "details": list(self.details),
            "remedy": self.remedy.to_dict() if self.remedy else None,
            "items": [i.to_dict() for i in self.items],
            "duration_s": round(self.duration_s, 4),
            "traceback": self.traceback,
            "data": self.data,
        }


def ok(message: str, details=()) -> Result:
    return Result(Status.OK, message, list(details))


def skip(message: str, details=(), quiet: bool = False) -> Result:
    return Result(Status.SKIP, message, list(details), quiet=quiet)


def warn(message: str, details=(), remedy: Remedy | None = None, items=()) -> Result:
    return Result(Status.WARN, message, list(details), remedy, list(items))


def fail(message: str, details=(), remedy: Remedy | None = None, items=()) -> Result:
    return Result(Status.FAIL, message, list(details), remedy, list(items))


def from_items(items: list[Item], ok_message: str, summary: str, remedy: Remedy | None = None,
               details=()) -> Result:
    """A result whose status is the worst of its items; ok (with ok_message) when there are none."""
    problems = [i for i in items if i.status not in (Status.OK, Status.SKIP)]
    if not problems:
        return Result(Status.OK, ok_message, list(details), items=list(items))
    return Result(worst(i.status for i in items), summary, list(details), remedy, list(items))
