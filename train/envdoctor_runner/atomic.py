"""Writes that are complete or absent: a folder is written under a staging name beside its real one and
renamed into place only once every file in it is written and fsynced, so a full disk (or a kill) never
leaves a half-written checkpoint, adapter or model under a name that --resume or vLLM would load.

A write that fails raises WriteFailed: the folder being written, the bytes it needed, the bytes free on
that filesystem, the reason (ENOSPC, EDQUOT, EFBIG...), with the staging folder already removed (its
space given back). Standard library only: train/merge.py and the runner use it.
"""

from __future__ import annotations

import errno as errnos
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

# Libraries that wrap the OSError: safetensors' Rust writer ("I/O error: No space left on device (os error
# 28)"), torch.save's C++ writer (the OSError of the Python file object is the exception's __context__).
_OS_ERROR = re.compile(r"os error (\d+)|\[Errno (\d+)\]")
SPACE = (errnos.ENOSPC, errnos.EDQUOT, errnos.EFBIG)
_unfinished: set[Path] = set()  # staged() folders being written: remove_unfinished() takes them on a stop


class WriteFailed(Exception):
    """A folder or file that could not be written; `line()` says so in one line."""

    def __init__(self, target: Path, cause: BaseException, needed: int | None = None):
        self.target, self.cause, self.needed = Path(target), cause, needed
        self.errno = write_errno(cause)
        self.free = free_bytes(self.target.parent)
        super().__init__(self.line())

    @property
    def out_of_space(self) -> bool:
        return self.errno in SPACE

    def reason(self) -> str:
        if self.errno == errnos.EFBIG:
            return "file too large (the file-size limit, ulimit -f, or the filesystem's)"
        if self.errno is not None:
            return os.strerror(self.errno).lower()
        return f"{type(self.cause).__name__}: {str(self.cause).strip().splitlines()[0] if str(self.cause) else ''}"

    def sizes(self) -> str:
        """'needs 2.5 MB, 1.2 MB free' as far as known."""
        parts = ([f"needs {human(self.needed)}"] if self.needed else []) + \
            ([f"{human(self.free)} free"] if self.free is not None else [])
        return ", ".join(parts)

    def line(self, what: str | None = None) -> str:
        sizes = self.sizes()
        return (f"cannot write {what or self.target}: {self.reason()}" + (f" ({sizes})" if sizes else ""))


def human(n: int | float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def write_errno(exc: BaseException | None) -> int | None:
    """The errno of a failed write, wherever the library put it (the exception, its cause, its message, or
    the context of torch's C++ RuntimeError); None when it is not an OS error at all.

    Only a plain RuntimeError's implicit context is looked into: any exception raised while another is
    handled has one, and a bug (a KeyError in an `except FileNotFoundError:` fallback) must stay a
    traceback, not read as "cannot write …: no such file or directory"."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc.errno
        m = _OS_ERROR.search(str(exc))
        if m:
            return int(m.group(1) or m.group(2))
        implicit = exc.__context__ if type(exc) is RuntimeError else None
        exc, seen = exc.__cause__ or implicit, seen + 1
    return None


def free_bytes(path: Path) -> int | None:
    """Free bytes for an unprivileged writer on the filesystem that holds `path` (or its nearest parent)."""
    path = Path(path)
    for p in (path, *path.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None


def staging_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp")


def fsync_tree(folder: Path) -> None:
    """Every file's data on disk, then the folder's entries: some filesystems (NFS, quotas, XFS) report a
    full disk only at fsync or close, not at write."""
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory: nothing more to do
        pass
    finally:
        os.close(fd)


def aside_name(final: Path) -> Path:
    """Where publish() keeps the folder it replaces until the new one holds the name."""
    return final.with_name(f".{final.name}.old-{os.getpid()}")


def recover(final: Path) -> bool:
    """Put back a folder publish() had moved aside when the process was killed (SIGKILL, a power cut)
    between its two renames: the name is empty and the complete old folder waits under its aside name.
    Whether `final` exists afterwards."""
    final = Path(final)
    if final.exists():
        return True
    for old in sorted(final.parent.glob(f".{final.name}.old-*")):
        try:
            os.replace(old, final)
            return True
        except OSError:  # another process (a rank) put it back first, or it is gone
            if final.exists():
                return True
    return False


def publish(stage: Path, final: Path) -> None:
    """Move a complete staging folder to its real name. A folder already there is moved aside first and
    removed only after the rename: at every moment one complete folder holds the name or the aside name."""
    old = None
    try:
        if final.exists():
            old = aside_name(final)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(stage, final)
    except BaseException:
        # A stop (KeyboardInterrupt from the signal handler) or an error between the two renames: the old
        # folder goes back to its name, else the name would be empty and the caller removes the staging one.
        if old is not None and old.exists() and not final.exists():
            os.replace(old, final)
        raise
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged(final: Path, needed: int | None = None):
    """`with staged(folder) as tmp:` write everything into tmp; on success it becomes `folder`. A failed
    write removes tmp and raises WriteFailed (other errors pass through, tmp removed too)."""
    final = Path(final)
    tmp = staging_name(final)
    _unfinished.add(tmp)
    try:
        shutil.rmtree(tmp, ignore_errors=True)  # a staging folder a killed run left
        tmp.mkdir(parents=True)
        yield tmp
        fsync_tree(tmp)
        publish(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # the space it took goes back before free space is measured
        if isinstance(exc, WriteFailed) or write_errno(exc) is None:
            raise
        raise WriteFailed(final, exc, needed) from exc
    finally:
        _unfinished.discard(tmp)


def remove_unfinished() -> None:
    """Remove the staging folders this process has open. For a stopped run: its main thread may be held in
    C++ (a collective) when the stop thread ends the process with os._exit, and a folder written across
    calls (the streamed float base) is not closed by any `with` that unwinds."""
    for tmp in list(_unfinished):
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: Path, text: str, needed: int | None = None) -> None:
    """A small file replaced atomically (a staging file, fsync, rename): never truncated by a full disk."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:  # a stop too: no staging file left behind
        tmp.unlink(missing_ok=True)
        if not isinstance(exc, OSError):
            raise
        raise WriteFailed(path, exc, needed or len(text.encode())) from exc


def size_of(tensors) -> int:
    """Bytes of the tensors in a (nested) state dict: what writing it needs, give or take the headers."""
    if hasattr(tensors, "nbytes") and hasattr(tensors, "dtype"):
        return int(tensors.nbytes)
    if isinstance(tensors, dict):
        return sum(size_of(v) for v in tensors.values())
    if isinstance(tensors, (list, tuple)):
        return sum(size_of(v) for v in tensors)
    return 0
