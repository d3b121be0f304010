"""Setting values in a `.wslconfig` and changing nothing else.

"Value" means exactly the characters WSL's parser reads as the value (wslini.scan gives their offsets):
spacing around `=`, a `# comment` after the value, trailing blanks, other lines, the encoding and its
byte-order mark, the line endings all stay byte for byte. A key WSL does not see yet is added after the
last key of the first [wsl2] section (or in a new [wsl2] section at the end) with the file's indent,
spacing around `=` and line ending. Every edit is read back through the same reader before it is
accepted: the new values must be what WSL will use, and every other value what it was.

On disk (plan_file): a symlink is followed (the target is edited, the link stays); a read-only file is
refused with the reason, because its owner made it read-only on purpose (Windows' Read-only attribute
shows up as no write bits on /mnt/c) and a tool should not quietly override that.
"""

from __future__ import annotations

import difflib
import re
import stat
from dataclasses import dataclass, field

from envdoctor.errors import EnvdoctorError
from envdoctor.wslconfig import INT_KEYS, SIZE_KEYS, parse_count, parse_size, read
from envdoctor.wslini import Entry, IniError, Scan, decode, scan

_KEY = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_BREAK = re.compile(r"\r\n|\r|\n")
_PLAIN = re.compile(r'[^\s"#\\]([^"#\\\r\n]*[^\s"#\\])?')   # written as is, no quoting needed


class EditError(EnvdoctorError):
    exit_code = 1


def check_updates(updates: dict[str, str]) -> dict[str, str]:
    """The updates, refused unless WSL would read each one back as given."""
    for key, value in updates.items():
        if not _KEY.fullmatch(key):
            raise EditError(f"{key!r} is not a .wslconfig key (a letter, then letters and digits)")
        if not _PLAIN.fullmatch(value):
            raise EditError(f"{key}={value!r}: a value may not be empty, start or end with a space, or hold "
                            "'#', '\"', '\\' or a line break")
        if key.lower() in SIZE_KEYS and parse_size(value) is None:
            raise EditError(f"{key}={value}: WSL expects a size like 48GB or 512MB (digits, then B, K, KB, M, "
                            "MB, G, GB, T or TB; upper case, no space)")
        if key.lower() in INT_KEYS and (parse_count(value) or 0) <= 0:
            raise EditError(f"{key}={value}: WSL expects a whole number above 0")
    return dict(updates)


def line_ending(text: str) -> str:
    """The file's line ending: the most common of CRLF, LF and CR alone (LF for a file without any)."""
    counts = {"\r\n": 0, "\n": 0, "\r": 0}
    for m in _BREAK.finditer(text):
        counts[m[0]] += 1
    best = max(counts.values())
    return "\n" if best == 0 else next(k for k in ("\r\n", "\n", "\r") if counts[k] == best)


def _after_line(text: str, pos: int) -> int | None:
    """Offset just after the line break that ends the line holding `pos`; None on the last line."""
    m = _BREAK.search(text, pos)
    return m.end() if m else None


def _splice(text: str, edits: list[tuple[int, int, str]]) -> str:
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    return text


def _style(text: str, ref: Entry | None) -> tuple[str, str]:
    """(indent, what sits between key and value) of a key line to copy; plain `key=value` without one."""
    if ref is None:
        return "", "="
    line_start = max(text.rfind("\n", 0, ref.key_start), text.rfind("\r", 0, ref.key_start)) + 1
    indent = text[line_start:ref.key_start]
    between = text[ref.key_start + len(ref.key):ref.value_start]
    if ref.value_start == ref.value_end:   # an empty value: its blanks may be trailing ones, not style
        between = text[ref.key_start + len(ref.key):ref.eq_end]
    ok = lambda s: all(c in " \t" for c in s)  # noqa: E731
    return (indent if ok(indent) else ""), (between if ok(between.replace("=", "", 1)) else "=")


def _wsl2_block(ini: Scan) -> tuple[int | None, Entry | None]:
    """End of the first [wsl2] header and the last key WSL files under it before another section."""
    events = sorted([(h.start, "h", h) for h in ini.headers] + [(e.key_start, "e", e) for e in ini.entries],
                    key=lambda t: t[0])
    header_end, last = None, None
    for _, kind, item in events:
        if kind == "h":
            if header_end is not None and item.name != "wsl2":
                break
            if header_end is None and item.name == "wsl2":
                header_end = item.end
        elif header_end is not None and item.name.startswith("wsl2."):
            last = item
    return header_end, last


def _candidates(text: str, missing: list[tuple[str, str]], ini: Scan) -> list[str]:
    nl = line_ending(text)
    header_end, last = _wsl2_block(ini)
    ref = last or (ini.entries[-1] if ini.entries else None)
    indent, between = _style(text, ref)
    lines = [f"{indent}{k}{between}{v}" for k, v in missing]
    out = []
    for anchor in ([last.value_end] if last else []) + ([header_end] if header_end is not None else []):
        at = _after_line(text, anchor)
        out.append(text + nl + nl.join(lines) if at is None else text[:at] + "".join(x + nl for x in lines) + text[at:])
    tail = text
    if tail and not _BREAK.search(tail[-1]):
        tail += nl
    if tail and _BREAK.split(tail)[-2:-1] != [""]:
        tail += nl                         # a blank line before the new section, unless there is one
    out.append(tail + f"[wsl2]{nl}" + "".join(x + nl for x in lines))
    # Last resort, at the top: WSL may never reach the end (a CR-only file whose comment runs to the end).
    out.append(f"[wsl2]{nl}" + "".join(x + nl for x in lines) + text)
    return out


def _reads_back(old: Scan, new_text: str, updates: dict[str, str]) -> str | None:
    """None when WSL reads `updates` from new_text and every other value as before; else what differs."""
    new = scan(new_text)
    for k, v in updates.items():
        if new.get(f"wsl2.{k}") != v:
            return f"WSL would read wsl2.{k} as {new.get(f'wsl2.{k}')!r}, not {v!r}"
    names = {f"wsl2.{k.lower()}" for k in updates}
    for name, e in old.values.items():
        if name not in names and new.get(name) != e.value:
            return f"{name} would change from {e.value!r} to {new.get(name)!r}"
    if len(new.skipped) != len(old.skipped) or len(new.duplicates) != len(old.duplicates):
        return "the lines WSL skips would change"
    return None


@dataclass
class TextEdit:
    text: str
    replaced: list[tuple[Entry, str]] = field(default_factory=list)   # (old entry, new value)
    added: list[str] = field(default_factory=list)


def edit_text(text: str, updates: dict[str, str]) -> TextEdit:
    """`text` (decoded, without BOM) with the [wsl2] values set; raises EditError when that cannot be
    done without touching anything else (a CR-only file whose comment swallows the section, say)."""
    ini = scan(text)
    edits, replaced, missing = [], [], []
    for k, v in updates.items():
        e = ini.values.get(f"wsl2.{k.lower()}")
        if e is None:
            missing.append((k, v))
        elif e.value_start == e.value_end:       # "memory=" or "memory = # note": put it right after '='
            at = e.eq_end if text[e.value_start:e.value_start + 1] == "#" else e.value_start
            edits.append((at, at, v))
            replaced.append((e, v))
        elif text[e.value_start:e.value_end] != v:
            edits.append((e.value_start, e.value_end, v))
            replaced.append((e, v))
    new = _splice(text, edits)
    if not missing:
        why = _reads_back(ini, new, updates)
        if why:
            raise EditError(f"cannot set the values without changing other lines: {why}")
        return TextEdit(new, replaced)
    why = "no place"
    for candidate in _candidates(new, missing, scan(new)):
        why = _reads_back(ini, candidate, updates)
        if why is None:
            return TextEdit(candidate, replaced, [k for k, _ in missing])
    raise EditError(f"cannot add {', '.join(k for k, _ in missing)} where WSL would read it without changing "
                    f"other lines ({why}); `envdoctor check` shows which lines WSL does not read")


def show_diff(old: str, new: str, path: str) -> str:
    """A unified diff by lines as WSL splits them (a form feed is not a line break here)."""
    def lines(t: str) -> list[str]:
        parts = _BREAK.split(t)
        return parts[:-1] if parts and parts[-1] == "" else parts
    return "".join(line + "\n" for line in difflib.unified_diff(lines(old), lines(new), path, f"{path} (new)",
                                                                 lineterm=""))


@dataclass
class FilePlan:
    path: str                 # the file written: a symlink's target
    given: str                # the path as named
    old: bytes | None         # None: the file does not exist yet
    new: bytes
    diff: str
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.old != self.new


def plan_file(system, path: str, updates: dict[str, str]) -> FilePlan:
    """What setting `updates` in `path` would write, byte for byte, and why, without writing anything."""
    updates = check_updates(updates)
    p = system.path(path)
    target = system.realpath(path) if p.is_symlink() else path
    notes = [f"{path} is a symlink to {target}: the target is edited, the link stays"] if target != path else []
    t = system.path(target)
    if t.exists() and not t.is_file():
        raise EditError(f"{target} is not a regular file")
    if not t.exists():
        edit = edit_text("", updates)
        return FilePlan(target, path, None, edit.text.encode("utf-8"), show_diff("", edit.text, target),
                        notes + [f"{target} does not exist yet: it is created (UTF-8, LF)"])
    if not stat.S_IMODE(t.stat().st_mode) & 0o222:
        raise EditError(f"{target} is read-only (mode {stat.S_IMODE(t.stat().st_mode):o}): not changing it. "
                        f"Make it writable first (chmod u+w '{target}', or clear Read-only in its Windows "
                        "Properties), then run this again")
    old = system.read_bytes(target)
    if old is None:
        raise EditError(f"{target} cannot be read")
    try:
        decoded = decode(old, target)
    except IniError as exc:
        raise EditError(str(exc)) from None
    if "\x00" in decoded.text:
        raise EditError(f"{target}: {decoded.wsl_reads}; save it as UTF-8, then run this again")
    if decoded.encode(decoded.text) != old:
        raise EditError(f"{target}: its {decoded.label} text does not re-encode to the same bytes; not touching it")
    edit = edit_text(decoded.text, updates)
    new = decoded.encode(edit.text)
    notes += [f"WSL misreads the file as it is: {p}" for p in read(old, target).problems if "never read" in p]
    if decoded.wsl_reads:
        notes.append(f"kept as {decoded.label}, but WSL cannot read it: {decoded.wsl_reads}")
    for e, v in edit.replaced:
        raw = decoded.text[e.value_start:e.value_end]
        if ";" in raw:
            notes.append(f"line {e.line}: {raw!r} was all value to WSL (';' does not start a comment in "
                         f".wslconfig, only '#' does): replaced by {v}")
    return FilePlan(target, path, old, new, show_diff(decoded.text, edit.text, target) if new != old else "", notes)
