"""Run checks: gather the facts they need concurrently, run each check bounded by a timeout.

A check that raises or hangs becomes an `error` result naming it; the doctor itself never dies.
Worker threads are daemons, so a hung check cannot keep the process alive after the report.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from envdoctor.context import Context
from envdoctor.errors import FactError
from envdoctor.model import Result, Status
from envdoctor.registry import Check, Provider
from envdoctor.system import System


@dataclass
class FactOutcome:
    value: object = None
    error: str | None = None        # why the facts are missing
    expected: bool = True           # FactError (the machine's fault) vs a crash (ours)
    traceback: str | None = None
    duration_s: float = 0.0


@dataclass
class Run:
    results: list[Result]
    facts: dict[str, FactOutcome] = field(default_factory=dict)
    duration_s: float = 0.0


class Future:
    """What a worker thread delivers: its value or its exception. (Not concurrent.futures.Future: that
    package imports logging, ~3 ms of every `check`, for the four methods used here.)"""

    __slots__ = ("_event", "_value", "_exc", "_notify")

    def __init__(self, notify: threading.Event | None = None) -> None:
        self._event = threading.Event()
        self._value, self._exc, self._notify = None, None, notify

    def _finish(self) -> None:
        self._event.set()
        if self._notify is not None:
            self._notify.set()

    def set_result(self, value) -> None:
        self._value = value
        self._finish()

    def set_exception(self, exc: BaseException) -> None:
        self._exc = exc
        self._finish()

    def done(self) -> bool:
        return self._event.is_set()

    def result(self, timeout: float | None = None):
        """The value (or the worker's exception, raised); TimeoutError when it has not come by then."""
        if not self._event.wait(timeout):
            raise TimeoutError
        if self._exc is not None:
            raise self._exc
        return self._value


def _spawn(fn: Callable, *args, notify: threading.Event | None = None) -> Future:
    fut = Future(notify)

    def body() -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - delivered to the waiting side
            fut.set_exception(exc)

    threading.Thread(target=body, daemon=True).start()
    return fut


def _provide(provider: Provider, fn: Callable, system: System, ctx: Context, deps: dict[str, Future]) -> FactOutcome:
    inputs = {}
    for name, fut in deps.items():
        out = fut.result()  # bounded: the dependency's own timeout is enforced by whoever waits on us
        if out.error is not None:
            return FactOutcome(error=f"needs '{name}', which failed: {out.error}", expected=out.expected)
        inputs[name] = out.value
    start = time.monotonic()
    try:
        return FactOutcome(fn(system, ctx, **inputs), duration_s=time.monotonic() - start)
    except FactError as exc:
        return FactOutcome(error=str(exc), duration_s=time.monotonic() - start)
    except Exception as exc:  # noqa: BLE001
        import traceback  # only for a crash: not an import every run pays
        return FactOutcome(error=f"probe '{provider.name}' crashed: {type(exc).__name__}: {exc}",
                           expected=False, traceback=traceback.format_exc(),
                           duration_s=time.monotonic() - start)


def start_facts(names: Iterable[str], providers: dict[str, Provider], system: System,
                ctx: Context, started: dict[str, Future] | None = None) -> dict[str, Future]:
    """Start gathering facts (and the facts they read) now; returns every future, by provider name."""
    futs = dict(started or {})

    def ensure(name: str) -> Future:
        if name not in futs:
            deps = {d: ensure(d) for d in providers[name].needs}
            # The provider's module is imported here, in the calling thread, not in the worker: imports
            # stay in one thread, in a fixed order.
            futs[name] = _spawn(_provide, providers[name], providers[name].function(), system, ctx, deps)
        return futs[name]

    for n in names:
        ensure(n)
    return futs


def run_checks(checks: Iterable[Check], providers: dict[str, Provider], system: System,
               ctx: Context, started: dict[str, Future] | None = None) -> Run:
    start = time.monotonic()
    checks = list(checks)
    selected = {c.id for c in checks}
    needed = sorted({n for c in checks for n in c.needs})
    missing = [n for n in needed if n not in providers]
    if missing:
        raise ValueError(f"no fact provider for {missing}")
    fact_futs = start_facts(needed, providers, system, ctx, started)

    def budget(name: str) -> float:  # a provider waits for its inputs first
        own = providers[name].timeout
        own = getattr(ctx, own) + 5 if isinstance(own, str) else own
        return own + max((budget(d) for d in providers[name].needs), default=0.0)

    fact_timeout = {n: budget(n) for n in fact_futs}
    outcomes: dict[str, FactOutcome] = {}
    lock = threading.Lock()

    def fact(name: str) -> FactOutcome:
        try:
            out = fact_futs[name].result(timeout=max(0.0, start + fact_timeout[name] - time.monotonic()))
        except TimeoutError:
            out = FactOutcome(error=f"probe '{name}' did not finish within {fact_timeout[name]:g} s",
                              expected=False)
        with lock:
            outcomes.setdefault(name, out)
        return out

    started: dict[str, float] = {}

    def run_one(check: Check) -> Result:
        kwargs = {}
        for name in check.needs:
            out = fact(name)
            if out.error is None:
                kwargs[name] = out.value
                continue
            owner = providers[name].owner
            if owner in selected and owner != check.id:
                return Result(Status.SKIP, f"skipped: needs facts that could not be read (see {owner})")
            status = Status.FAIL if out.expected else Status.ERROR
            return Result(status, out.error.splitlines()[0], out.error.splitlines()[1:], traceback=out.traceback)
        started[check.id] = time.monotonic()
        res = check.fn(**kwargs)
        if isinstance(res, Result):
            res.duration_s = time.monotonic() - started[check.id]
        return res

    finished = threading.Event()  # set by each check that ends: the loop below wakes for it
    futures = {c.id: _spawn(run_one, c, notify=finished) for c in checks}
    results: dict[str, Result] = {}
    pending = {c.id: c for c in checks}
    while pending:
        now = time.monotonic()
        for cid, check in list(pending.items()):
            fut = futures[cid]
            if fut.done():
                results[cid] = _collect(check, fut, started.get(cid), now)
                del pending[cid]
            elif cid in started and now - started[cid] > check.timeout:
                results[cid] = Result(Status.ERROR, f"check '{cid}' did not finish within {check.timeout:g} s "
                                                    "(abandoned; the rest of the report is complete)")
                results[cid].duration_s = now - started[cid]
                del pending[cid]
        if pending:
            deadlines = [started[c] + pending[c].timeout - now for c in pending if c in started]
            finished.wait(timeout=max(0.0, min(deadlines + [0.05])))
            finished.clear()  # an end after this is seen by the next pass, which comes after the clear
    ordered = []
    for check in checks:
        res = results[check.id]
        res.check_id, res.title, res.category = check.id, check.title, check.category
        ordered.append(res)
    return Run(ordered, outcomes, time.monotonic() - start)


def _collect(check: Check, fut: Future, started_at: float | None, now: float) -> Result:
    try:
        res = fut.result()
        if not isinstance(res, Result):
            raise TypeError(f"check returned {type(res).__name__}, not a Result")
    except Exception as exc:  # noqa: BLE001 - a broken check must not break the report
        import traceback
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        res = Result(Status.ERROR, f"check '{check.id}' crashed: {type(exc).__name__}: {exc}", traceback=tb)
        res.duration_s = (now - started_at) if started_at else 0.0
    return res
