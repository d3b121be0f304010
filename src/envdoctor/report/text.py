"""The human report: grouped by category, [✓] [!] [✗] markers, readable without colour."""

from __future__ import annotations

import os
from typing import TextIO

from envdoctor.engine import Run
from envdoctor.model import Item, Remedy, Result, Status
from envdoctor.redact import redact_text
from envdoctor.report import counts

MARKS = {Status.OK: "✓", Status.WARN: "!", Status.FAIL: "✗", Status.ERROR: "E", Status.SKIP: "-"}
ASCII_MARKS = {Status.OK: "+", Status.WARN: "!", Status.FAIL: "x", Status.ERROR: "E", Status.SKIP: "-"}
ASCII_TEXT = {"—": "-", "–": "-", "·": "|", "≥": ">=", "≤": "<=", "…": "...", "→": "->", "✗": "x",
              "×": "x"}
COLOURS = {Status.OK: "32", Status.WARN: "33", Status.FAIL: "31", Status.ERROR: "35", Status.SKIP: "2"}
INDENT = "    "


def use_colour(stream: TextIO, env) -> bool:
    if env.get("NO_COLOR"):
        return False
    if env.get("FORCE_COLOR"):
        return True
    return hasattr(stream, "isatty") and stream.isatty() and env.get("TERM") != "dumb"


def can_encode(stream: TextIO, text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "ascii")
        return True
    except (UnicodeEncodeError, LookupError):
        return False


class Writer:
    def __init__(self, stream: TextIO, colour: bool, verbose: bool) -> None:
        self.stream, self.colour, self.verbose = stream, colour, verbose
        self.marks = MARKS if can_encode(stream, "✓✗·—") else ASCII_MARKS
        self.lines: list[str] = []

    def paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def mark(self, status: Status) -> str:
        return self.paint(f"[{self.marks[status]}]", COLOURS[status])

    def add(self, line: str = "") -> None:
        self.lines.append(line)

    def flush(self) -> None:
        text = redact_text("\n".join(self.lines) + "\n")
        if self.marks is ASCII_MARKS:
            for fancy, plain in ASCII_TEXT.items():
                text = text.replace(fancy, plain)
            # Whatever else the terminal cannot show (a package's own text) becomes '?', never a crash.
            enc = getattr(self.stream, "encoding", None) or "ascii"
            text = text.encode(enc, "replace").decode(enc)
        self.stream.write(text)
        self.stream.flush()


def _remedy(w: Writer, remedy: Remedy | None, indent: str) -> None:
    if remedy is None:
        return
    if remedy.command:
        w.add(f"{indent}{w.paint('fix:', '1')} {remedy.command}")
    if remedy.text:
        w.add(f"{indent}{'' if remedy.command else w.paint('fix: ', '1')}{remedy.text}")
    if remedy.fix_id:
        w.add(f"{indent}{w.paint('or:', '1')}  envdoctor fix {remedy.fix_id}")


def _item(w: Writer, item: Item, show_remedy: bool) -> None:
    w.add(f"{INDENT}{w.mark(item.status)} {item.message}")
    for d in item.details:
        w.add(f"{INDENT}    {d}")
    if show_remedy:
        _remedy(w, item.remedy, INDENT + "    ")


def _result(w: Writer, r: Result) -> None:
    timing = w.paint(f"  ({r.duration_s * 1000:.0f} ms)", "2") if w.verbose else ""
    w.add(f"  {w.mark(r.status)} {r.title} — {r.message}{timing}")
    problem = r.status not in (Status.OK, Status.SKIP)
    if problem or w.verbose:
        for d in r.details:
            w.add(f"{INDENT}{d}")
        for item in r.items:
            if item.status in (Status.OK, Status.SKIP) and not w.verbose:
                continue
            # The result's own remedy covers its items; item remedies show alone or with -v.
            _item(w, item, show_remedy=w.verbose or not (r.remedy and r.remedy.command))
        _remedy(w, r.remedy, INDENT)
    if r.traceback and w.verbose:
        for line in r.traceback.rstrip().splitlines():
            w.add(f"{INDENT}{w.paint(line, '2')}")


def _fold_skips(results: list[Result]) -> list[Result]:
    """Consecutive skips with one reason (no GPU: eight checks) become one line."""
    out: list[Result] = []
    for r in results:
        prev = out[-1] if out else None
        if (prev is not None and r.status == prev.status == Status.SKIP and r.message == prev.message
                and r.category == prev.category):
            out[-1] = Result(Status.SKIP, prev.message, prev.details, title=f"{prev.title}, {r.title}",
                             category=prev.category)
            continue
        out.append(r)
    return out


def render(run: Run, target: str, version: str, stream: TextIO, verbose: bool = False,
           env=os.environ) -> None:
    w = Writer(stream, use_colour(stream, env), verbose)
    w.add(f"envdoctor {version} · {target}")
    if verbose:
        for name, fact in sorted(run.facts.items()):
            state = "ok" if fact.error is None else f"failed: {fact.error.splitlines()[0]}"
            w.add(w.paint(f"  facts '{name}': {fact.duration_s * 1000:.0f} ms, {state}", "2"))
    category = None
    results = run.results if verbose else _fold_skips([r for r in run.results if not r.quiet])
    for r in results:
        if r.category != category:
            category = r.category
            w.add()
            w.add(w.paint(category, "1"))
        _result(w, r)
    c = counts(run.results)
    w.add()
    summary = (f"{c['ok']} ok · {c['warn']} warnings · {c['fail']} failed · {c['error']} errors · "
               f"{c['skip']} skipped  ({run.duration_s:.2f} s)")
    if c["fail"] or c["error"]:
        summary += "  →  fix the ✗ items above" + ("; `-v` shows tracebacks" if c["error"] else "")
    w.add(summary)
    w.flush()
