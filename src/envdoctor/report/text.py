"""The human report: grouped by category, [✓] [!] [✗] markers, readable without colour."""

from __future__ import annotations

import io
import os
import re
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
HANG = "  "  # continuation lines sit this much deeper than the line they continue


def terminal_width(stream: TextIO, env) -> int | None:
    """Columns to wrap to: $COLUMNS, else the terminal's width; None (no wrapping) when the report goes to a
    file or a pipe, so logs and grep keep one line per finding."""
    try:
        cols = int(env.get("COLUMNS", ""))
        if cols > 0:
            return cols
    except ValueError:
        pass
    if not (hasattr(stream, "isatty") and stream.isatty()):
        return None
    try:
        return os.get_terminal_size(stream.fileno()).columns or None
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return None


UNIT = re.compile(r"(ms|s|min|h|[KMGT]i?B|B|%|×)[)\],.;:]*$")


def wrap(text: str, width: int | None, first: int = 0, hang: int = 0) -> list[str]:
    """`text` cut into lines at spaces only: the first line has `width - first` columns, the others
    `width - hang`. A word longer than a line stays whole and overflows (a path or a URL broken in two
    cannot be copied). Runs of spaces inside a line are kept."""
    if not width:
        return [text]
    words: list[str] = []
    for word in text.split(" "):
        # "16.0 GiB", "0.11 s)": a number keeps its unit on its line.
        if words and UNIT.match(word) and words[-1][-1:].isdigit():
            words[-1] += " " + word
        else:
            words.append(word)
    lines: list[str] = []
    line = words[0]
    for word in words[1:]:
        room = width - (first if not lines else hang)
        if line.strip() and len(line) + 1 + len(word) > room:
            lines.append(line.rstrip())
            line = word
        else:
            line += " " + word
    lines.append(line.rstrip())
    # Spaces at a break vanish: continuation lines start with a word.
    return lines[:1] + [ln.lstrip() for ln in lines[1:]]


def wrap_command(command: str, width: int | None, first: int = 0, hang: int = 0) -> list[str]:
    """A shell command over several lines that still pastes: cut only at spaces outside quotes, each line but
    the last ending in ` \\` (the shell joins them again). A word never breaks; one too long overflows. A
    command whose quotes do not balance stays on one line."""
    if not width or first + len(command) <= width:
        return [command]
    cuts, quote, escaped = [], None, False
    for i, ch in enumerate(command):
        if escaped:
            escaped = False
        elif ch == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (not i or command[i - 1] == " "):
            return [command]  # a comment would swallow the ` \\` and run the next line on its own
        elif ch == " " and i and command[i - 1] != " ":
            cuts.append(i)
    if quote or escaped or not cuts:
        return [command]
    lines: list[str] = []
    start, last = 0, None
    for cut in cuts + [len(command)]:
        room = width - (first if not lines else hang) - 2  # 2: the " \\" that ends a cut line
        if last is not None and cut - start > room:
            lines.append(command[start:last].strip() + " \\")
            start = last
        last = cut
    lines.append(command[start:].strip())
    return lines


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
    def __init__(self, stream: TextIO, colour: bool, verbose: bool, width: int | None = None) -> None:
        self.stream, self.colour, self.verbose, self.width = stream, colour, verbose, width
        self.marks = MARKS if can_encode(stream, "✓✗·—") else ASCII_MARKS
        self.lines: list[str] = []

    def paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def mark(self, status: Status) -> str:
        return self.paint(f"[{self.marks[status]}]", COLOURS[status])

    def add(self, line: str = "") -> None:
        self.lines.append(line)

    def para(self, indent: str, text: str, head: str = "", head_len: int = 0) -> None:
        """One wrapped paragraph: `indent`, then `head` (painted; `head_len` visible columns), then `text`;
        continuation lines under the text's start plus HANG."""
        first = len(indent) + head_len
        rest = " " * (first + len(HANG))
        for n, line in enumerate(wrap(text, self.width, first, len(rest))):
            self.add(f"{indent}{head}{line}" if n == 0 else f"{rest}{line}")

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
        # Cut only where the shell allows it (` \\` at the end of a line), so the lines still paste as one.
        rest = " " * (len(indent) + len("fix: ") + len(HANG))
        for n, line in enumerate(wrap_command(remedy.command, w.width, len(indent) + len("fix: "), len(rest))):
            w.add(f"{indent}{w.paint('fix:', '1')} {line}" if n == 0 else f"{rest}{line}")
    if remedy.text:
        if remedy.command:
            w.para(indent, remedy.text)
        else:
            w.para(indent, remedy.text, w.paint("fix: ", "1"), len("fix: "))
    if remedy.fix_id:
        w.add(f"{indent}{w.paint('or:', '1')}  envdoctor fix {remedy.fix_id}")


def _item(w: Writer, item: Item, show_remedy: bool) -> None:
    w.para(INDENT, item.message, w.mark(item.status) + " ", 4)
    for d in item.details:
        w.para(INDENT + "    ", d)
    if show_remedy:
        _remedy(w, item.remedy, INDENT + "    ")


def _result(w: Writer, r: Result) -> None:
    timing = w.paint(f"  ({r.duration_s * 1000:.0f} ms)", "2") if w.verbose else ""
    w.para("  ", f"{r.title} — {r.message}", w.mark(r.status) + " ", 4)
    if timing:
        w.lines[-1] += timing
    problem = r.status not in (Status.OK, Status.SKIP)
    if problem or w.verbose:
        for d in r.details:
            w.para(INDENT, d)
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


PROBLEMS = (Status.WARN, Status.FAIL, Status.ERROR)


def render(run: Run, target: str, version: str, stream: TextIO, verbose: bool = False,
           env=os.environ, problems: bool = False, width: int | None = 0) -> None:
    """`problems`: only warnings, failures and errors (a healthy environment prints the summary alone).
    `width`: columns to wrap to; 0 (default) asks the terminal, None never wraps."""
    w = Writer(stream, use_colour(stream, env), verbose, terminal_width(stream, env) if width == 0 else width)
    if problems:
        shown = [r for r in run.results if r.status in PROBLEMS]
    else:
        shown = run.results if verbose else _fold_skips([r for r in run.results if not r.quiet])
    if shown or not problems:
        w.para("", f"envdoctor {version} · {target}")
    if verbose:
        for name, fact in sorted(run.facts.items()):
            state = "ok" if fact.error is None else f"failed: {fact.error.splitlines()[0]}"
            w.add(w.paint(f"  facts '{name}': {fact.duration_s * 1000:.0f} ms, {state}", "2"))
    category = None
    for r in shown:
        if r.category != category:
            category = r.category
            w.add()
            w.add(w.paint(category, "1"))
        _result(w, r)
    if shown or not problems:
        w.add()
    w.para("", summary(run, verbose))
    w.flush()


def summary(run: Run, verbose: bool) -> str:
    """The counts line. Skips that are not news (WSL checks off WSL) are not listed without -v, so they are
    counted apart as "not applicable": the skipped count is the skips the report names."""
    c = counts(run.results)
    quiet = 0 if verbose else sum(1 for r in run.results if r.status == Status.SKIP and r.quiet)
    text = (f"{c['ok']} ok · {c['warn']} warnings · {c['fail']} failed · {c['error']} errors · "
            f"{c['skip'] - quiet} skipped" + (f" · {quiet} not applicable" if quiet else "") +
            f"  ({run.duration_s:.2f} s)")
    if c["fail"] or c["error"]:
        text += "  →  fix the ✗ items above" + ("; `-v` shows tracebacks" if c["error"] else "")
    return text
