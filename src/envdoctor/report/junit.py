"""`envdoctor check --junit FILE`: one JUnit test case per check, for CI systems that show test reports
(GitHub, GitLab, Jenkins). fail → <failure>, error → <error>, skip → <skipped>; a warning passes unless
--strict, and is kept in <system-out> either way."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from envdoctor.model import Status, failing_statuses
from envdoctor.redact import redact


def _text(r) -> str:
    lines = [r.message] + [f"  {d}" for d in r.details]
    lines += [f"  {i.status.value}: {i.message}" for i in r.items]
    if r.remedy:
        lines.append("fix: " + " — ".join(x for x in (r.remedy.command, r.remedy.text) if x))
    return redact("\n".join(lines))


def build(results, duration_s: float, strict: bool, hostname: str) -> bytes:
    bad = failing_statuses(strict)
    suite = ET.Element("testsuite", name="envdoctor", hostname=hostname, tests=str(len(results)),
                       failures=str(sum(r.status in bad - {Status.ERROR} for r in results)),
                       errors=str(sum(r.status == Status.ERROR for r in results)),
                       skipped=str(sum(r.status == Status.SKIP for r in results)), time=f"{duration_s:.3f}")
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=f"envdoctor.{r.category}", name=r.check_id,
                             time=f"{r.duration_s:.3f}")
        body = _text(r)
        if r.status == Status.ERROR:
            ET.SubElement(case, "error", message=redact(r.message), type="error").text = body
        elif r.status in bad:
            ET.SubElement(case, "failure", message=redact(r.message), type=r.status.value).text = body
        elif r.status == Status.SKIP:
            ET.SubElement(case, "skipped", message=redact(r.message))
        if r.status != Status.OK:
            ET.SubElement(case, "system-out").text = body
    root = ET.Element("testsuites", {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped", "time")},
                      name="envdoctor")
    root.append(suite)
    ET.indent(root)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8") + b"\n"
