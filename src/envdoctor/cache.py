"""A small JSON cache of facts derived from files, keyed by path, size and mtime.

Lives in $XDG_CACHE_HOME/envdoctor (default ~/.cache/envdoctor). A missing, unreadable or stale cache
is never an error: the facts are recomputed.
"""

from __future__ import annotations

import json
import threading

from envdoctor.system import System


class FileCache:
    def __init__(self, system: System, name: str) -> None:
        home = system.env.get("HOME", "/tmp")
        base = system.env.get("XDG_CACHE_HOME") or f"{home.rstrip('/')}/.cache"
        self.system, self.path = system, f"{base}/envdoctor/{name}.json"
        self._lock = threading.Lock()
        self._dirty = False
        try:
            self._data = json.loads(system.read_text(self.path) or "{}")
            if not isinstance(self._data, dict):
                self._data = {}
        except ValueError:
            self._data = {}

    def get(self, file: str):
        key = self.system.stat_key(file)
        return self._data.get(key) if key else None

    def put(self, file: str, value) -> None:
        key = self.system.stat_key(file)
        if key:
            with self._lock:
                self._data[key] = value
                self._dirty = True

    def save(self) -> None:
        if not self._dirty:
            return
        try:
            self.system.write_text(self.path, json.dumps(self._data))
        except OSError:
            pass  # a read-only home must not break the doctor
