"""Removing one line from a `.pth` file: the remedy for a folder that a .pth puts ahead of
site-packages. `pip uninstall` cannot help there (the shadowing copy is outside the environment, and
the shadowed one is the copy pip should keep). The edit is a FileEdit: backed up byte for byte, then
written atomically (System.write_bytes); refused, with the reason, where the file is not writable."""

from __future__ import annotations

import difflib
import os

from envdoctor.system import System


class PthEditError(Exception):
    pass


def without_lines(system: System, path: str, remove: dict[int, str]) -> tuple[bytes, bytes, str]:
    """(old bytes, new bytes, unified diff) with the given lines (1-based number -> stripped text)
    removed, after checking that each still reads the same and that the file and its folder can be
    written (the atomic write stages a file beside it)."""
    old = system.read_bytes(path)
    if old is None:
        raise PthEditError(f"{path} cannot be read (it was there when the environment was probed)")
    lines = old.splitlines(keepends=True)
    for n, text in remove.items():
        if not 1 <= n <= len(lines) or lines[n - 1].decode("utf-8", "replace").strip() != text:
            raise PthEditError(f"{path} changed since the probe: line {n} no longer reads {text!r}")
    real = system.path(path)
    for what, target in (("the file", real), ("its folder", real.parent)):
        if not os.access(target, os.W_OK):
            raise PthEditError(f"{path} is not writable by this user ({what} is read-only or owned by "
                               f"another user): remove line(s) {', '.join(map(str, sorted(remove)))} as its owner")
    new = b"".join(line for i, line in enumerate(lines, 1) if i not in remove)
    diff = "".join(difflib.unified_diff(old.decode("utf-8", "replace").splitlines(keepends=True),
                                        new.decode("utf-8", "replace").splitlines(keepends=True),
                                        path, path + " (new)"))
    return old, new, diff
