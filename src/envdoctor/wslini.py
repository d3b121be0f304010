"""The one reader for WSL's INI files (`%UserProfile%\\.wslconfig` and `/etc/wsl.conf`), reading them
the way WSL's own parser does (docs/wslconfig.md has the rules and where they come from).

It differs from a generic INI reader where WSL does, and those are the places that decide what a
value is: only `#` starts a comment (also after a value or a header); `;` is an ordinary character,
so `memory=8GB ; note` has the value `8GB ; note`; a header is `[` letter (letter|digit)* `]`; a key
is letter (letter|digit)* then `=`; `"` toggles quoting and `\\` escapes `\\ " b n t` or joins
lines; the FIRST occurrence of a key wins; a malformed line is skipped up to the next LF.

`scan` also returns where each value sits in the text, so the editor (wslconfig_edit) replaces
exactly the characters WSL reads as the value and nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

BOM = "\ufeff"


class IniError(ValueError):
    """A file that is not text WSL or envdoctor can read (the message names the file and why)."""


@dataclass(frozen=True)
class Decoded:
    text: str                 # without the byte-order mark
    encoding: str             # "utf-8", "utf-16-le" or "utf-16-be"
    bom: bool
    wsl_reads: str | None     # None: WSL reads this encoding; else why it does not

    def encode(self, text: str) -> bytes:
        mark = {"utf-8": b"\xef\xbb\xbf", "utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff"}[self.encoding]
        return (mark if self.bom else b"") + text.encode(self.encoding)

    @property
    def label(self) -> str:
        return self.encoding.upper() + (" with BOM" if self.bom else "")


def decode(data: bytes, name: str = "the file") -> Decoded:
    """WSL opens .wslconfig with the C runtime's `rt,ccs=UTF-8`: a UTF-8 or UTF-16-LE byte-order mark
    picks that encoding, anything else is read as UTF-8. UTF-16-BE is decoded here so envdoctor can
    show and keep it, but flagged: WSL reads it as UTF-8 and understands none of it."""
    if data.startswith(b"\xff\xfe\x00\x00") or data.startswith(b"\x00\x00\xfe\xff"):
        raise IniError(f"{name} is UTF-32: neither WSL nor envdoctor reads it; save it as UTF-8")
    for mark, enc in ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")):
        if data.startswith(mark):
            body, bom = data[len(mark):], True
            break
    else:
        body, bom, enc = data, False, "utf-8"
    try:
        text = body.decode(enc)
    except UnicodeDecodeError as exc:
        raise IniError(f"{name} is not valid {enc.upper()}{' (it starts with that byte-order mark)' if bom else ''}"
                       f" at byte {exc.start + (len(data) - len(body))}: save it as UTF-8") from None
    why = None
    if enc == "utf-16-be":
        why = "it is UTF-16-BE: WSL reads only UTF-8 and UTF-16-LE, so it reads this file as garbage"
    elif "\x00" in text:
        why = "it contains NUL characters (UTF-16 without a byte-order mark?): WSL reads it as UTF-8"
    return Decoded(text, enc, bom, why)


@dataclass(frozen=True)
class Entry:
    name: str            # "wsl2.memory": section and key as WSL matches them (lower case)
    key: str             # the key as spelled in the file
    value: str           # the value WSL acts on (quotes and escapes resolved, trimmed)
    line: int
    key_start: int       # offsets into the text
    value_start: int     # first character WSL reads as the value
    value_end: int       # after the last one (== value_start for an empty value)
    eq_end: int          # just after the '='


@dataclass(frozen=True)
class Header:
    name: str            # lower case
    line: int
    start: int
    end: int             # just after ']'


@dataclass(frozen=True)
class Skipped:
    line: int
    start: int
    end: int
    reason: str
    comment: bool        # a `#` comment (ends at the next LF, like an invalid line)


@dataclass
class Scan:
    entries: list[Entry] = field(default_factory=list)          # every key=value WSL parses, in order
    values: dict[str, Entry] = field(default_factory=dict)      # name -> the entry WSL uses (the first)
    duplicates: list[Entry] = field(default_factory=list)       # later ones, ignored by WSL
    headers: list[Header] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        e = self.values.get(name.lower())
        return e.value if e else None


def _alpha(c: str) -> bool:
    return len(c) == 1 and ("a" <= c <= "z" or "A" <= c <= "Z")


def _alnum(c: str) -> bool:
    return _alpha(c) or (len(c) == 1 and "0" <= c <= "9")


def _hspace(c: str) -> bool:
    return c == " " or c == "\t"


_BREAK = re.compile(r"\r\n|\r|\n")


class _Stream:
    """Characters one at a time; "" at the end. In text mode CRLF reads as one LF, as the Windows C
    runtime does for .wslconfig."""

    def __init__(self, text: str, text_mode: bool) -> None:
        self.s, self.pos, self.fold, self.eof = text, 0, text_mode, False
        self._last = 0

    def get(self) -> str:
        if self.pos >= len(self.s):
            self.eof, self._last = True, 0
            return ""
        if self.fold and self.s.startswith("\r\n", self.pos):
            self.pos, self._last = self.pos + 2, 2
            return "\n"
        self.pos, self._last = self.pos + 1, 1
        return self.s[self.pos - 1]

    def unget(self) -> None:
        self.pos -= self._last

    def at(self) -> int:
        """Offset of the character just read."""
        return self.pos - self._last


def scan(text: str, text_mode: bool = True) -> Scan:
    """Read `text` (decoded, no BOM) as WSL does. text_mode: .wslconfig (CRLF folded); False for
    /etc/wsl.conf, which WSL's init reads on Linux."""
    starts = [0] + [m.end() for m in _BREAK.finditer(text)]

    def line_of(pos: int) -> int:
        lo, hi = 0, len(starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if starts[mid] <= pos else (lo, mid - 1)
        return lo + 1

    out, r = Scan(), _Stream(text, text_mode)
    keybuf, section_len = "\0", 0     # WSL builds "section.key" in one buffer; kept to match its quirks
    c, comment_at = "", None

    def skip_invalid(start: int, reason: str) -> None:
        nonlocal c
        while c not in ("", "\n"):   # WSL skips an invalid line up to the next LF, not CR
            c = r.get()
        out.skipped.append(Skipped(line_of(start), start, r.pos, reason, False))

    while True:
        if comment_at is not None:
            while True:             # a comment also runs to the next LF: a lone CR does not end it
                c = r.get()
                if c == "\r":
                    c = r.get()
                if c in ("\n", ""):
                    break
            out.skipped.append(Skipped(line_of(comment_at), comment_at, r.pos, "comment", True))
            comment_at = None
        if r.eof:
            return out
        c = r.get()
        while _hspace(c):
            c = r.get()
        start = r.at()
        if c in ("", "\n"):
            continue
        if c == "\r":
            if r.get() != "\n":
                r.unget()
            continue
        if c == "#":
            comment_at = start
            continue
        if c == "[":
            c = r.get()
            if not _alpha(c):
                skip_invalid(start, "a [section] name starts with a letter, right after '['")
                continue
            keybuf = ""
            while _alnum(c):
                keybuf += c
                c = r.get()
            if c != "]":
                skip_invalid(start, "a [section] name has only letters and digits, then ']'")
                continue
            end = r.pos
            c = r.get()
            while _hspace(c):
                c = r.get()
            if c not in ("", "\n", "\r", "#"):
                skip_invalid(start, "nothing but a # comment may follow a [section] header")
                continue
            section_len = len(keybuf)
            out.headers.append(Header(keybuf.lower(), line_of(start), start, end))
            if c == "#":
                comment_at = r.at()
            continue
        if not _alpha(c):
            reason = ("';' does not start a comment for WSL (only '#' does)" if c == ";" else
                      "a key starts with a letter" if c != "=" else "a key comes before '='")
            skip_invalid(start, reason)
            continue
        keybuf = keybuf[:section_len].ljust(section_len, "\0") + ("." if section_len else "")
        key = ""
        while _alnum(c):
            key += c
            c = r.get()
        keybuf += key
        while _hspace(c):
            c = r.get()
        if c != "=":
            skip_invalid(start, "a key has only letters and digits, then '='")
            continue
        eq_end = r.pos
        c = r.get()
        while _hspace(c):
            c = r.get()
        value_start = r.at() if c else r.pos
        chars: list[str] = []
        trimmed, value_end, quoted, bad = 0, value_start, False, None
        while c not in ("", "\n", "\r"):
            if c == '"':
                quoted = not quoted
            elif c == "\\":
                c2 = r.get()
                if c2 in ("\\", '"'):
                    chars.append(c2)
                elif c2 in ("b", "n", "t"):
                    chars.append({"b": "\b", "n": "\n", "t": "\t"}[c2])
                elif c2 not in ("\r", "\n"):     # "\\\n" joins the next line; "\\\r" is dropped
                    bad = f"'\\{c2}' is not an escape WSL knows (\\\\ \\\" \\b \\n \\t)" if c2 else \
                        "a '\\' at the end of the file"
                    break
            elif c == "#" and not quoted:
                comment_at = r.at()
                break
            else:
                chars.append(c)
            if not _hspace(c):
                trimmed, value_end = len(chars), r.pos
            c = r.get()
        if bad or quoted:
            comment_at = None
            skip_invalid(start, bad or 'a \'"\' is not closed')
            continue
        entry = Entry(keybuf.split("\0")[0].lower(), key, "".join(chars[:trimmed]), line_of(start), start,
                      value_start, value_end, eq_end)
        out.entries.append(entry)
        if entry.name in out.values:
            out.duplicates.append(entry)
        else:
            out.values[entry.name] = entry


def swallowed(text: str, s: Skipped) -> tuple[int, int] | None:
    """Lines a comment or invalid line runs over because they end in a lone CR (WSL ends them only at
    LF): (first, last) line numbers that WSL never reads, or None."""
    body = text[s.start:s.end].rstrip("\r\n")
    lines = _BREAK.split(body)
    if len(lines) > 1 and any(line.strip() for line in lines[1:]):
        return s.line + 1, s.line + len(lines) - 1
    return None
