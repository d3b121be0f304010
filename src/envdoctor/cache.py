"""A small JSON cache of facts derived from files: one entry per path, valid while the file's size, mtime
and inode are the ones it was computed from.

Lives in $XDG_CACHE_HOME/envdoctor (default ~/.cache/envdoctor). A missing, unreadable or stale cache
is never an error: the facts are recomputed.

One entry per path (not one per path+stat, as version 1 kept) so a file that changes replaces its entry
instead of adding one; entries of files that no longer exist (deleted venvs, test folders) are dropped
when the cache is written. Version 1 grew to 18 MB on a busy machine and parsing it cost ~60 ms of
every `check`.
"""

from __future__ import annotations

import json
import os
import threading

from envdoctor.system import System

VERSION = 2
MAX_ENTRIES = 20_000  # far above one machine's venvs; a bound, not a tuning knob


class FileCache:
    def __init__(self, system: System, name: str) -> None:
        home = system.env.get("HOME", "/tmp")
        base = system.env.get("XDG_CACHE_HOME") or f"{home.rstrip('/')}/.cache"
        self.system = system
        self.legacy = f"{base}/envdoctor/{name}.json"
        self.path = f"{base}/envdoctor/{name}-v{VERSION}.json"
        self._lock = threading.Lock()
        self._dirty = False
        self._data: dict[str, list] = {}
        try:
            data = json.loads(system.read_text(self.path) or "{}")
            if isinstance(data, dict) and data.get("version") == VERSION and isinstance(data.get("entries"), dict):
                self._data = data["entries"]
        except ValueError:
            pass

    def signature(self, file: str) -> list[int] | None:
        """[size, mtime_ns, inode]: what must be unchanged for a cached fact to hold (None: no such file).
        The inode catches a file replaced by another of the same size and mtime (a reinstall)."""
        try:
            st = os.stat(self.system.path(file))
        except OSError:
            return None
        return [st.st_size, st.st_mtime_ns, st.st_ino]

    def get(self, file: str):
        entry = self._data.get(file)
        if not isinstance(entry, list) or len(entry) != 4:
            return None
        return entry[3] if entry[:3] == self.signature(file) else None

    def put(self, file: str, value) -> None:
        sig = self.signature(file)
        if sig is None:
            return
        with self._lock:
            self._data.pop(file, None)  # re-inserted last: the oldest entries go first past MAX_ENTRIES
            self._data[file] = sig + [value]
            self._dirty = True

    def save(self) -> None:
        if not self._dirty:
            return
        with self._lock:
            # Only when something changed: one stat per entry, to forget the files that are gone.
            live = {k: v for k, v in self._data.items() if os.path.exists(self.system.path(k))}
            if len(live) > MAX_ENTRIES:
                live = dict(list(live.items())[-MAX_ENTRIES:])
            self._data, self._dirty = live, False
            text = json.dumps({"version": VERSION, "entries": live}, separators=(",", ":"))
        try:
            self.system.write_text(self.path, text)
            if self.system.exists(self.legacy):
                os.unlink(self.system.path(self.legacy))  # version 1's file, never read again
        except OSError:
            pass  # a read-only home must not break the doctor
