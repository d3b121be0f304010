"""Where the dynamic loader would find a library: RPATH/RUNPATH ($ORIGIN), LD_LIBRARY_PATH, the
ld.so cache and the default folders, plus what torch has already loaded into the process."""

from __future__ import annotations

import re

from envdoctor.system import System

DEFAULT_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
                "/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib",
                "/usr/lib/wsl/lib")
_CACHE_LINE = re.compile(r"^\s*(\S+)\s+\(([^)]*)\)\s+=>\s+(\S+)\s*$")


def expand(path: str, origin: str) -> str:
    return path.replace("${ORIGIN}", origin).replace("$ORIGIN", origin)


class Resolver:
    """Resolves DT_NEEDED names the way ld.so does, through a System."""

    def __init__(self, system: System, preloaded: dict[str, str] | None = None) -> None:
        self.system = system
        self.preloaded = dict(preloaded or {})   # soname -> path already in the process (torch's libs)
        self.ld_library_path = [p for p in system.env.get("LD_LIBRARY_PATH", "").split(":") if p]
        self._cache: dict[str, str] | None = None

    def use_ld_cache(self, entries: dict[str, str]) -> None:
        """The parse of `ldconfig -p` from an earlier run (the caller checked /etc/ld.so.cache is unchanged)."""
        self._cache = dict(entries)

    def ld_cache(self) -> dict[str, str]:
        if self._cache is None:
            self._cache = {}
            res = self.system.run(["/sbin/ldconfig", "-p"], timeout=5.0)
            if not res.ok:
                res = self.system.run(["ldconfig", "-p"], timeout=5.0)
            for line in res.stdout.splitlines() if res.ok else []:
                m = _CACHE_LINE.match(line)
                if m and ("x86-64" in m[2] or "AArch64" in m[2] or "64" in m[2]):
                    self._cache.setdefault(m[1], m[3])
        return self._cache

    def resolve(self, name: str, origin: str, rpath: list[str], runpath: list[str]) -> tuple[str | None, list[str]]:
        """(path or None, the places searched). `origin` is the folder of the object that needs it."""
        if "/" in name:
            return (name if self.system.exists(name) else None), [name]
        if name in self.preloaded:
            return self.preloaded[name], ["already loaded by torch"]
        searched: list[str] = []
        dirs = ([expand(p, origin) for p in rpath] if not runpath else []) + self.ld_library_path + \
               [expand(p, origin) for p in runpath]
        for d in dirs:
            searched.append(d)
            if self.system.exists(f"{d}/{name}"):
                return f"{d}/{name}", searched
        hit = self.ld_cache().get(name)
        searched.append("ld.so cache")
        if hit and self.system.exists(hit):
            return hit, searched
        for d in DEFAULT_DIRS:
            if self.system.exists(f"{d}/{name}"):
                return f"{d}/{name}", searched + [d]
        return None, searched + ["default folders"]
