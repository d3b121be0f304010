"""Text and JSON reports: grouping, markers, colour rules, ASCII fallback, redaction."""

import io
import json

from envdoctor.engine import FactOutcome, Run
from envdoctor.model import Item, Remedy, Result, Status
from envdoctor.redact import redact, redact_text
from envdoctor.report import exit_code, json_report, text


class Facts:
    def to_dict(self):
        return {"env": {"HF_TOKEN": "hf_abcdefghijklmnopqrstuvwxyz123456", "HOME": "/home/u"},
                "url": "https://alice:s3cret@example.com/simple"}


def sample_run():
    def res(cid, cat, status, msg, **kw):
        return Result(status, msg, check_id=cid, title=cid.split(".")[1].title(), category=cat, **kw)
    return Run([
        res("python.version", "Python", Status.OK, "Python 3.11.7", details=["hidden unless -v"]),
        res("packages.requirements", "Packages", Status.FAIL, "requirements: 1 missing",
            items=[Item(Status.FAIL, "axolotl 0.13.0 requires torchao==0.13.0, but it is not installed")],
            remedy=Remedy("/v/bin/python -m pip install 'torchao==0.13.0'", "torch stays pinned.")),
        res("system.swap", "System", Status.WARN, "no swap", remedy=Remedy(text="Add swap.", fix_id="wsl.swap")),
        res("system.boom", "System", Status.ERROR, "check 'system.boom' crashed: ValueError: x",
            traceback="Traceback (most recent call last):\nValueError: x"),
    ], {"host": FactOutcome(Facts(), duration_s=0.01)}, 0.123)


class Utf8(io.StringIO):
    encoding = "utf-8"


class Tty(Utf8):
    def isatty(self):
        return True


def test_text_report_plain():
    out = Utf8()
    text.render(sample_run(), "/v/bin/python (test)", "0.1.0", out, env={})
    assert out.getvalue() == """envdoctor 0.1.0 · /v/bin/python (test)

Python
  [✓] Version — Python 3.11.7

Packages
  [✗] Requirements — requirements: 1 missing
    [✗] axolotl 0.13.0 requires torchao==0.13.0, but it is not installed
    fix: /v/bin/python -m pip install 'torchao==0.13.0'
    torch stays pinned.

System
  [!] Swap — no swap
    fix: Add swap.
    or:  envdoctor fix wsl.swap
  [E] Boom — check 'system.boom' crashed: ValueError: x

1 ok · 1 warnings · 1 failed · 1 errors · 0 skipped  (0.12 s)  →  fix the ✗ items above; `-v` shows tracebacks
"""


def test_colour_only_on_a_tty_without_no_color():
    tty = Tty()
    text.render(sample_run(), "t", "0.1.0", tty, env={"TERM": "xterm"})
    assert "\033[31m[✗]\033[0m" in tty.getvalue()
    tty = Tty()
    text.render(sample_run(), "t", "0.1.0", tty, env={"TERM": "xterm", "NO_COLOR": "1"})
    assert "\033[" not in tty.getvalue()


def test_ascii_fallback_when_the_terminal_cannot_encode():
    out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    text.render(sample_run(), "t", "0.1.0", out, env={})
    out.seek(0)
    value = out.buffer.getvalue().decode("ascii")
    assert "[x] Requirements - requirements: 1 missing" in value and "[+] Version" in value


def test_verbose_shows_details_timings_and_tracebacks():
    out = Utf8()
    text.render(sample_run(), "t", "0.1.0", out, verbose=True, env={})
    value = out.getvalue()
    assert "hidden unless -v" in value and "Traceback (most recent call last)" in value and " ms)" in value
    assert "facts 'host'" in value


def test_json_report_schema_and_redaction():
    run = sample_run()
    data = json.loads(json.dumps(json_report.build(run, {"python": "/v/bin/python"}, "0.1.0",
                                                   exit_code(run.results, False))))
    assert data["schema_version"] == 5 and data["summary"] == {
        "ok": 1, "warn": 1, "fail": 1, "skip": 0, "error": 1, "exit_code": 1}
    req = data["results"][1]
    assert req["id"] == "packages.requirements" and req["items"][0]["status"] == "fail"
    assert req["remedy"]["command"].startswith("/v/bin/python -m pip install")
    assert data["facts"]["host"]["env"]["HF_TOKEN"] == "***"
    assert data["facts"]["host"]["url"] == "https://***@example.com/simple"
    assert "hf_abc" not in json.dumps(data)


def test_redaction_patterns():
    assert redact_text("token hf_abcdefghijklmnopqrstuvwxyz1234 ok") == "token *** ok"
    assert redact_text("git+https://ghp_abcdefghijklmnopqrstuvwxyz0123@github.com/o/r") == \
        "git+https://***@github.com/o/r"
    assert redact_text("git+ssh://git@github.com/o/r") == "git+ssh://git@github.com/o/r"
    assert redact({"WANDB_API_KEY": "abc", "PATH": "/usr/bin"}) == {"WANDB_API_KEY": "***", "PATH": "/usr/bin"}


def test_strict_exit_code():
    run = sample_run()
    ok_only = [r for r in run.results if r.status in (Status.OK, Status.WARN)]
    assert exit_code(ok_only, strict=False) == 0 and exit_code(ok_only, strict=True) == 1
