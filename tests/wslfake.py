"""Fake WSL machines as directory trees: proc files, a Windows profile under /mnt/c, interop answers."""

from __future__ import annotations

from fakes import GiB, linux_box

from envdoctor.system import CommandResult

PS = "/mnt/c/WINDOWS/System32/WindowsPowerShell/v1.0/powershell.exe"


def wsl_box(root, version=2, vm_ram=31, host_ram=64, host_cpus=16, wslconfig: str | bytes | None = None,
            interop=True, user="alice", **kw):
    kernel = "5.15.167.4-microsoft-standard-WSL2" if version == 2 else "4.4.0-19041-Microsoft"
    commands = {PS: CommandResult((PS,), 0, f"{host_ram * GiB} {host_cpus}\r\n", "", 0.3)} if interop else {}
    s = linux_box(root, ram=vm_ram, avail=vm_ram - 1, commands=commands,
                  env={"HOME": f"/home/{user}", "PATH": "/usr/bin", "USER": user}, **kw)
    s.write("/proc/sys/kernel/osrelease", kernel + "\n")
    s.write("/proc/version", f"Linux version {kernel} (gcc)\n")
    if interop:
        s.write("/proc/sys/fs/binfmt_misc/WSLInterop", "enabled\n")
        s.write(PS, "")
    s.mkdir(f"/mnt/c/Users/{user}")
    s.mkdir("/mnt/c/Users/Public")
    s.write("/usr/lib/wsl/lib/libcuda.so.1", "")
    s.write("/usr/lib/wsl/lib/nvidia-smi", "#!/bin/sh\n")
    s.path("/usr/lib/wsl/lib/nvidia-smi").chmod(0o755)
    if wslconfig is not None:
        path = s.path(f"/mnt/c/Users/{user}/.wslconfig")
        path.write_bytes(wslconfig if isinstance(wslconfig, bytes) else wslconfig.encode())
    return s
