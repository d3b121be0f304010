"""`envdoctor check --format github`: GitHub Actions workflow commands, so that failures and warnings
show as annotations on the run's summary page, then the plain text report for the log."""

from __future__ import annotations

from typing import TextIO

from envdoctor.model import Status
from envdoctor.redact import redact

LEVEL = {Status.FAIL: "error", Status.ERROR: "error", Status.WARN: "warning"}


def _data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _prop(s: str) -> str:
    return _data(s).replace(":", "%3A").replace(",", "%2C")


def annotations(results) -> list[str]:
    out = []
    for r in results:
        level = LEVEL.get(r.status)
        if level is None:
            continue
        body = [r.message] + list(r.details[:10])
        if r.remedy:
            body.append("fix: " + " — ".join(x for x in (r.remedy.command, r.remedy.text) if x))
        out.append(f"::{level} title={_prop(f'envdoctor {r.check_id}')}::{_data(redact(chr(10).join(body)))}")
    return out


def render(results, stream: TextIO) -> None:
    for line in annotations(results):
        stream.write(line + "\n")
