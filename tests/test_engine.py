"""The engine: concurrency, timeouts, crashes and failed probes become results, never a dead doctor."""

import threading
import time

import pytest

from envdoctor import cli, engine, registry
from envdoctor.context import Context
from envdoctor.errors import FactError
from envdoctor.model import Status, ok
from envdoctor.registry import Check, Provider
from fakes import FakeSystem

CTX = Context(python="/venv/bin/python", python_reason="test", probe_timeout=1.0)


def mk(cid, fn, needs=(), timeout=5.0):
    return Check(cid, cid.title(), "Test", "test", tuple(needs), fn, timeout)


def test_raising_and_hanging_checks_become_errors(tmp_path):
    def boom():
        raise RuntimeError("kaboom")

    release, finished = threading.Event(), threading.Event()

    def hang():
        release.wait(120)  # held until the test lets go: only the engine's own timeout can end the run
        finished.set()

    checks = [mk("t.fine", lambda: ok("fine")), mk("t.boom", boom), mk("t.hang", hang, timeout=0.3)]
    try:
        run = engine.run_checks(checks, {}, FakeSystem(tmp_path), CTX)
        assert not finished.is_set()  # the report came back while the hung check was still running
    finally:
        release.set()
    res = {r.check_id: r for r in run.results}
    assert res["t.fine"].status == Status.OK
    assert res["t.boom"].status == Status.ERROR and "t.boom" in res["t.boom"].message
    assert "kaboom" in res["t.boom"].message and "RuntimeError" in res["t.boom"].traceback
    assert res["t.hang"].status == Status.ERROR and "did not finish within 0.3 s" in res["t.hang"].message
    assert [r.check_id for r in run.results] == ["t.fine", "t.boom", "t.hang"]


def test_checks_run_concurrently(tmp_path):
    """All eight checks are in progress at once: each waits at a barrier that opens only when all eight
    have arrived. Run one after another, the first would wait alone and the barrier would break."""
    barrier = threading.Barrier(8, timeout=60)

    def meet():
        barrier.wait()
        return ok("met")

    checks = [mk(f"t.meet{i}", meet, timeout=120) for i in range(8)]
    run = engine.run_checks(checks, {}, FakeSystem(tmp_path), CTX)
    assert [r.status for r in run.results] == [Status.OK] * 8, [r.message for r in run.results]


def test_provider_runs_once_and_feeds_every_check(tmp_path):
    calls = []

    def facts(system, ctx):
        calls.append(1)
        return {"n": 42}

    provs = {"f": Provider("f", facts, 5.0, "t.a")}
    checks = [mk("t.a", lambda f: ok(str(f["n"])), ["f"]), mk("t.b", lambda f: ok(str(f["n"] + 1)), ["f"])]
    run = engine.run_checks(checks, provs, FakeSystem(tmp_path), CTX)
    assert [r.message for r in run.results] == ["42", "43"] and calls == [1]


def test_failed_probe_fails_its_owner_and_skips_the_rest(tmp_path):
    def broken(system, ctx):
        raise FactError("could not probe /venv/bin/python: exit code 1\nImportError: boom")

    provs = {"f": Provider("f", broken, 5.0, "t.owner")}
    checks = [mk("t.owner", lambda f: ok("x"), ["f"]), mk("t.other", lambda f: ok("y"), ["f"])]
    res = engine.run_checks(checks, provs, FakeSystem(tmp_path), CTX).results
    assert res[0].status == Status.FAIL and res[0].message.startswith("could not probe")
    assert res[0].details == ["ImportError: boom"]
    assert res[1].status == Status.SKIP and "t.owner" in res[1].message
    # Without its owner selected, the dependent check carries the failure itself.
    res = engine.run_checks(checks[1:], provs, FakeSystem(tmp_path), CTX).results
    assert res[0].status == Status.FAIL


def test_crashing_and_hanging_probes_are_errors(tmp_path):
    def crash(system, ctx):
        raise KeyError("oops")

    def hang(system, ctx):
        time.sleep(30)

    provs = {"c": Provider("c", crash, 5.0, "t.c"), "h": Provider("h", hang, 0.3, "t.h")}
    checks = [mk("t.c", lambda c: ok("x"), ["c"]), mk("t.h", lambda h: ok("y"), ["h"])]
    res = engine.run_checks(checks, provs, FakeSystem(tmp_path), CTX).results
    assert res[0].status == Status.ERROR and "crashed: KeyError" in res[0].message and res[0].traceback
    assert res[1].status == Status.ERROR and res[1].message == "probe 'h' did not finish within 0.3 s"


@pytest.fixture
def broken_registry(monkeypatch):
    def boom():
        raise ValueError("bad check")

    def hang():
        time.sleep(30)

    extra = {"zz.boom": mk("zz.boom", boom), "zz.hang": mk("zz.hang", hang, timeout=0.2),
             "zz.fine": mk("zz.fine", lambda: ok("all good"))}
    real = registry.load()
    monkeypatch.setattr(registry, "load", lambda: {**real, **extra})


def test_cli_prints_the_report_despite_broken_checks(broken_registry, capsys):
    code = cli.main(["check", "--only", "zz"])
    out = capsys.readouterr().out
    assert code == 1
    assert "[E] Zz.Boom — check 'zz.boom' crashed: ValueError: bad check" in out
    assert "zz.hang' did not finish within 0.2 s" in out
    assert "[✓] Zz.Fine — all good" in out or "[+] Zz.Fine — all good" in out  # UTF-8 or ASCII marks
    assert "Traceback" not in out
    cli.main(["check", "--only", "zz.boom", "-v"])
    assert "Traceback" in capsys.readouterr().out
