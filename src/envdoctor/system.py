"""The one seam between envdoctor and the machine.

Every fact about the machine (files, environment variables, subprocesses, disk and CPU numbers, NVML)
is read through a `System`. Tests hand the engine a `System` rooted in a temporary directory tree, with
its own environment and scripted commands, so the logic under test is the real logic.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing before the probe starts
if TYPE_CHECKING:  # annotations only
    from typing import Callable, Mapping, Sequence


STOP_GRACE_S = 45  # longer than torchrun's own wait for its ranks (30 s), so that it is never cut short


class Stopped(KeyboardInterrupt):
    """A streamed command stopped by SIGINT or SIGTERM. `child_code`: the exit code it stopped with by
    itself (it has said why), None when it was killed. `exit_code`: ours, as a shell reports a command
    killed by that signal (130, 143)."""

    def __init__(self, signum: int, child_code: int | None):
        super().__init__(signum)
        self.signum, self.child_code, self.exit_code = signum, child_code, 128 + int(signum)


def _raise_stopped(signum, _frame):
    raise Stopped(signum, None)


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int | None  # None: did not finish (timeout) or could not start
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool = False
    error: str | None = None  # could not start: "No such file or directory: …"

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        """One line saying what went wrong, for messages."""
        cmd = " ".join(self.argv[:1]) + (" …" if len(self.argv) > 1 else "")
        if self.error:
            return f"{cmd}: {self.error}"
        if self.timed_out:
            return f"{cmd}: timed out after {self.duration_s:.1f} s"
        if self.returncode is not None and self.returncode < 0:
            return f"{cmd}: killed by signal {-self.returncode}{signal_name(-self.returncode)}"
        return f"{cmd}: exit code {self.returncode}"


def signal_name(n: int) -> str:
    """' (SIGSEGV)' for 11, '' for a number this platform has no name for."""
    try:
        return f" ({signal.Signals(n).name})"
    except ValueError:
        return ""


@dataclass(frozen=True)
class DiskUsage:
    total: int
    free: int


class System:
    """The real machine. Paths are absolute machine paths; `root` re-bases them (tests)."""

    def __init__(self, root: str | os.PathLike = "/", env: Mapping[str, str] | None = None,
                 cwd: str | None = None) -> None:
        self.root = Path(root)
        self._plain = str(self.root) == "/"
        self.env: Mapping[str, str] = dict(os.environ if env is None else env)
        self.cwd = cwd or os.getcwd()

    # -- files -------------------------------------------------------------------------------
    def path(self, p: str | os.PathLike) -> Path:
        p = Path(p)
        if str(self.root) == "/":
            return p
        return self.root / p.relative_to(p.anchor) if p.is_absolute() else self.root / p

    def read_text(self, p: str | os.PathLike, limit: int | None = None) -> str | None:
        """The file's text, or None when it cannot be read. Never raises."""
        try:
            with open(self.path(p), encoding="utf-8", errors="replace") as fh:
                return fh.read() if limit is None else fh.read(limit)
        except OSError:
            return None

    def realpath(self, p: str | os.PathLike) -> str:
        """Symlinks resolved, as a machine path (inside the root of a fake machine)."""
        resolved = self.path(p).resolve()
        if str(self.root) == "/":
            return str(resolved)
        try:
            return "/" + str(resolved.relative_to(self.root.resolve()))
        except ValueError:
            return str(resolved)

    def exists(self, p: str | os.PathLike) -> bool:
        return os.path.exists(str(p) if self._plain else self.path(p))

    def is_dir(self, p: str | os.PathLike) -> bool:
        return self.path(p).is_dir()

    def listdir(self, p: str | os.PathLike) -> list[str]:
        try:
            return sorted(os.listdir(self.path(p)))
        except OSError:
            return []

    def stat_key(self, p: str | os.PathLike) -> str | None:
        """path:size:mtime, for caches of facts derived from a file's content (hot: no pathlib)."""
        try:
            st = os.stat(str(p) if self._plain else self.path(p))
        except OSError:
            return None
        return f"{p}:{st.st_size}:{st.st_mtime_ns}"

    def write_text(self, p: str | os.PathLike, text: str) -> None:
        self.write_bytes(p, text.encode("utf-8"))

    def read_bytes(self, p: str | os.PathLike) -> bytes | None:
        try:
            return self.path(p).read_bytes()
        except OSError:
            return None

    def read_head(self, p: str | os.PathLike, n: int) -> tuple[bytes, int] | None:
        """The first n bytes of a (possibly huge) file and its size, or None when it cannot be read."""
        try:
            with open(self.path(p), "rb") as fh:
                return fh.read(n), os.fstat(fh.fileno()).st_size
        except OSError:
            return None

    def write_bytes(self, p: str | os.PathLike, data: bytes) -> None:
        """Write atomically: a staging file in the same folder, fsync, then os.replace. A symlink is
        followed (its target is replaced, the link stays) and an existing file keeps its permission bits."""
        target = self.path(p)
        if target.is_symlink():
            target = Path(os.path.realpath(target))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            if target.exists():
                os.chmod(tmp, target.stat().st_mode & 0o7777)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()

    def disk_usage(self, p: str | os.PathLike) -> DiskUsage | None:
        try:
            u = shutil.disk_usage(self.path(p))
        except OSError:
            return None
        return DiskUsage(total=u.total, free=u.free)

    def device_id(self, p: str | os.PathLike) -> int | None:
        try:
            return os.stat(self.path(p)).st_dev
        except OSError:
            return None

    # -- processes ---------------------------------------------------------------------------
    def which(self, name: str) -> str | None:
        """Like `command -v`, over this machine's PATH and files."""
        for folder in self.env.get("PATH", os.defpath).split(os.pathsep):
            candidate = f"{folder.rstrip('/')}/{name}"
            real = self.path(candidate)
            if folder and real.is_file() and os.access(real, os.X_OK):
                return candidate
        return None

    def run(self, argv: Sequence[str], timeout: float, input: str | None = None,
            env: Mapping[str, str] | None = None) -> CommandResult:
        """Run a command with a timeout. Never raises: failures come back in the result."""
        return self._started(argv, input, env)(timeout)

    def spawn(self, argv: Sequence[str], timeout: float) -> Callable[[], CommandResult]:
        """Start a command now, in this thread; the returned function waits for it as `run` would (same
        timeout, counted from now). A subclass that scripts `run` (tests) gets `run` called at the wait."""
        if type(self).run is not System.run:
            return lambda: self.run(argv, timeout=timeout)
        return functools.partial(self._started(argv, None, None), timeout)

    def _started(self, argv: Sequence[str], input: str | None,
                 env: Mapping[str, str] | None) -> Callable[[float], CommandResult]:
        argv = tuple(str(a) for a in argv)
        start = time.monotonic()
        try:
            # Its own session (process group): on a timeout the whole group goes, not just the first process
            # (a hung nvidia-smi's helper, a probe's grandchild would otherwise outlive envdoctor).
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                env=dict(self.env if env is None else env), cwd=self.cwd, start_new_session=os.name == "posix")
        except (OSError, ValueError) as exc:
            failed = CommandResult(argv, None, "", "", time.monotonic() - start,
                                   error=f"{getattr(exc, 'strerror', None) or exc}: "
                                         f"{getattr(exc, 'filename', None) or argv[0]}")
            return lambda timeout: failed

        def finish(timeout: float) -> CommandResult:
            try:
                out, err = proc.communicate(input, timeout=max(0.0, start + timeout - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill_group(proc)
                out, err = _drain(proc)
                return CommandResult(argv, None, out, err, time.monotonic() - start, timed_out=True)
            except BaseException:  # Ctrl-C while waiting: take the group down with us
                kill_group(proc)
                raise
            return CommandResult(argv, proc.returncode, out, err, time.monotonic() - start)
        return finish

    def stream(self, argv: Sequence[str], env: Mapping[str, str] | None = None, stops_held: bool = False) -> int:
        """Run a long command with its output going straight to ours (a training run); its exit code.

        A stop reaches the child too: Ctrl-C (on a terminal it reaches our whole process group; it is
        forwarded when only we got it) and SIGTERM (Slurm, systemd, `docker stop`: forwarded). The child is
        given STOP_GRACE_S to stop cleanly (a run prints how to resume; torchrun first waits up to 30 s for
        its ranks); `Stopped` then goes on up with the child's exit code. Killed only if it does not stop, or
        on a second signal. `stops_held`: the child starts with SIGINT/SIGTERM blocked and lets them in once
        its handler is in place (train/qlora.py, train/launch.py): a Ctrl-C while its interpreter starts
        would otherwise end it with "Fatal Python error: init_import_site" and a traceback."""
        import threading
        main = threading.current_thread() is threading.main_thread()
        held = stops_held and main and hasattr(signal, "pthread_sigmask")
        # Ours first, then the child: a SIGTERM between the two would end envdoctor with the child left running.
        previous = signal.signal(signal.SIGTERM, _raise_stopped) if main else None
        before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM}) if held else None
        try:
            proc = subprocess.Popen([str(a) for a in argv], env=dict(self.env if env is None else env),
                                    cwd=self.cwd)
        except OSError as exc:
            if held:
                signal.pthread_sigmask(signal.SIG_SETMASK, before)
            if main and previous is not None:
                signal.signal(signal.SIGTERM, previous)
            print(f"cannot run {argv[0]}: {exc}", flush=True)
            return 127
        try:
            try:
                if held:  # a stop that came while the child started is raised here, and forwarded below
                    signal.pthread_sigmask(signal.SIG_SETMASK, before)
                code = proc.wait()
                return code if code >= 0 else 128 - code  # killed by a signal: as a shell reports it
            except KeyboardInterrupt as stop:
                signum = getattr(stop, "signum", signal.SIGINT)
                try:
                    proc.send_signal(signum)
                    code = proc.wait(timeout=STOP_GRACE_S)
                except (OSError, subprocess.TimeoutExpired, KeyboardInterrupt):
                    proc.kill()
                    proc.wait()
                    raise Stopped(signum, None) from None
                raise Stopped(signum, code if code >= 0 else 128 - code) from None
        finally:
            if main and previous is not None:  # None: a handler installed outside Python, left as it is
                signal.signal(signal.SIGTERM, previous)

    # -- CPU and memory ----------------------------------------------------------------------
    def cpu_affinity(self) -> int | None:
        """CPUs this process may run on (taskset/cgroup cpusets), None where unknown."""
        try:
            return len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            return None

    def cpu_count(self) -> int | None:
        return os.cpu_count()

    def memory_fallback(self) -> dict | None:
        """RAM/swap where /proc/meminfo does not exist (macOS, Windows): psutil."""
        try:
            import psutil  # local: only needed off Linux
        except ImportError:
            return None
        vm, sw = psutil.virtual_memory(), psutil.swap_memory()
        return {"total": vm.total, "available": vm.available, "swap_total": sw.total,
                "swap_free": sw.free}

    # -- NVML ----------------------------------------------------------------------------------
    def nvml(self) -> dict:
        """Driver and GPUs from NVML (nvidia-ml-py), as plain data. Raises NvmlUnavailable."""
        try:
            import pynvml
        except ImportError as exc:
            raise NvmlUnavailable(f"nvidia-ml-py is not installed ({exc})") from exc
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML: {exc}") from exc
        try:
            return _nvml_snapshot(pynvml)
        except pynvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML: {exc}") from exc
        finally:
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError:
                pass

    def platform(self) -> dict:
        import platform as _platform
        u = _platform.uname()
        return {"system": u.system, "release": u.release, "machine": u.machine}


def kill_group(proc: subprocess.Popen) -> None:
    """Kill a process started in its own session, and everything it started."""
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError, OSError):
        try:
            proc.kill()
        except OSError:
            pass


def _drain(proc: subprocess.Popen) -> tuple[str, str]:
    """What a killed process had printed. A grandchild in another session may still hold the pipes open:
    give up on them after a moment rather than hang again."""
    try:
        out, err = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        for pipe in (proc.stdout, proc.stderr):
            try:
                pipe.close()
            except OSError:
                pass
        proc.wait()
        return "", ""
    return _text(out), _text(err)


def _text(b: bytes | str | None) -> str:
    if b is None:
        return ""
    return b if isinstance(b, str) else b.decode("utf-8", "replace")


class NvmlUnavailable(Exception):
    """NVML could not be loaded or queried (no driver, no library, no permission)."""


def _str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _nvml_snapshot(nv) -> dict:
    def optional(fn, *args):
        try:
            return fn(*args)
        except nv.NVMLError:
            return None

    gpus = []
    for i in range(nv.nvmlDeviceGetCount()):
        h = nv.nvmlDeviceGetHandleByIndex(i)
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        mig = optional(nv.nvmlDeviceGetMigMode, h)
        procs = optional(nv.nvmlDeviceGetComputeRunningProcesses, h) or []
        gpus.append({
            "index": i, "name": _str(nv.nvmlDeviceGetName(h)), "uuid": _str(optional(nv.nvmlDeviceGetUUID, h) or ""),
            "cc": list(nv.nvmlDeviceGetCudaComputeCapability(h)),
            "mem_total": int(mem.total), "mem_free": int(mem.free), "mem_used": int(mem.used),
            "mig": bool(mig[0]) if mig else None,
            "processes": [{"pid": int(p.pid), "used": int(p.usedGpuMemory or 0)} for p in procs],
        })
    return {"driver": _str(nv.nvmlSystemGetDriverVersion()),
            "cuda_driver": int(nv.nvmlSystemGetCudaDriverVersion_v2()), "gpus": gpus}
