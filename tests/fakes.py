"""A fake machine: a directory tree for its files, its own environment, scripted commands.

Only the *system* is fake; every probe and check under test runs for real against it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from envdoctor.system import CommandResult, DiskUsage, System

GiB = 1024 ** 3


class FakeSystem(System):
    def __init__(self, root: Path, env: dict | None = None, cwd: str = "/home/u/work",
                 commands: dict | None = None, disks: dict | None = None, cpus: int = 16,
                 affinity: int | None = None, uname=("Linux", "6.8.0-45-generic", "x86_64")) -> None:
        super().__init__(root=root, env=env or {"HOME": "/home/u", "PATH": "/usr/bin"}, cwd=cwd)
        self.commands: dict[str, Callable | CommandResult] = commands or {}
        self.disks = disks or {}   # path prefix -> (total, free, device)
        self.cpus, self.affinity, self.uname = cpus, affinity if affinity is not None else cpus, uname
        self.ran: list[tuple[str, ...]] = []

    def write(self, path: str, text: str) -> "FakeSystem":
        target = self.path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return self

    def mkdir(self, path: str) -> "FakeSystem":
        self.path(path).mkdir(parents=True, exist_ok=True)
        return self

    def run(self, argv, timeout, input=None, env=None) -> CommandResult:
        argv = tuple(str(a) for a in argv)
        self.ran.append(argv)
        answer = self.commands.get(argv[0])
        if answer is None:
            return CommandResult(argv, None, "", "", 0.0, error=f"No such file or directory: {argv[0]}")
        return answer(argv, timeout) if callable(answer) else answer

    def disk_usage(self, p):
        best = max((k for k in self.disks if str(p).startswith(k)), key=len, default=None)
        if best is None:
            return None
        total, free, _ = self.disks[best]
        return DiskUsage(total, free)

    def device_id(self, p):
        best = max((k for k in self.disks if str(p).startswith(k)), key=len, default=None)
        return self.disks[best][2] if best else None

    def cpu_count(self):
        return self.cpus

    def cpu_affinity(self):
        return self.affinity

    def memory_fallback(self):
        return None

    def platform(self):
        return dict(zip(("system", "release", "machine"), self.uname))


def meminfo(total_gib: float, avail_gib: float, swap_gib: float = 0.0) -> str:
    kb = lambda g: int(g * 1024 * 1024)  # noqa: E731
    return (f"MemTotal:       {kb(total_gib)} kB\nMemFree:        {kb(avail_gib / 2)} kB\n"
            f"MemAvailable:   {kb(avail_gib)} kB\nSwapTotal:      {kb(swap_gib)} kB\n"
            f"SwapFree:       {kb(swap_gib)} kB\n")


def linux_box(root: Path, ram=64, avail=60, swap=8, cpus=16, free_gib=500, **kw) -> FakeSystem:
    s = FakeSystem(root, cpus=cpus, disks={"/": (1000 * GiB, free_gib * GiB, 1)}, **kw)
    s.write("/etc/os-release", 'PRETTY_NAME="Ubuntu 24.04.1 LTS"\nID=ubuntu\nVERSION_ID="24.04"\n')
    s.write("/proc/sys/kernel/osrelease", "6.8.0-45-generic\n")
    s.write("/proc/version", "Linux version 6.8.0-45-generic (buildd@lcy02)\n")
    s.write("/proc/meminfo", meminfo(ram, avail, swap))
    s.mkdir("/home/u/work")
    return s


def probe_answer(payload: dict) -> Callable:
    """A scripted interpreter that answers the probe with `payload`."""
    def answer(argv, timeout):
        return CommandResult(argv, 0, json.dumps(payload), "", 0.01)
    return answer
