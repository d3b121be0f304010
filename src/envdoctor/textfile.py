"""Reading a user's text file: bytes that are not UTF-8 (a binary file, a Latin-1 export) are an error that
names the file, the line and column and the byte, never a UnicodeDecodeError traceback."""

from __future__ import annotations

from pathlib import Path


class NotText(ValueError):
    """The file is not UTF-8 text; the message names the file and where."""


def decode(raw: bytes, where: str, what: str = "a text file") -> str:
    """`raw` as text (a UTF-8 byte-order mark dropped); NotText saying where the first bad byte is."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = raw[:exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        raise NotText(f"{where}: not UTF-8 text (line {line}, column {column}, byte {exc.start}: "
                      f"{raw[exc.start:exc.start + 1]!r}); expected {what}") from None


def read(path: str | Path, what: str = "a text file") -> str:
    """A file's text; OSError when it cannot be read, NotText when it is not UTF-8."""
    path = Path(path)
    return decode(path.read_bytes(), str(path), what)
