"""The merge as a pipeline: reader threads read base tensors ahead (byte ranges of the safetensors
files), the calling thread merges (on the GPU when there is one), writer threads write each result at its
offset in its output shard; every shard is fsynced once, at the end, all at the same time.

The stages overlap because file reads and writes (os.preadv / os.pwrite) and torch's copies and kernels
release the GIL. Host memory is bounded by a byte budget: a tensor is read only when the bytes in flight
(read, being merged, waiting to be written) leave room for it; one tensor larger than the whole budget
still passes, alone. A failure in any thread stops every stage and comes back to the caller as a
PipelineError naming the stage and the tensor: never a hang, never a half-written shard under its real name.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

POLL_S = 0.1  # how often a blocked stage looks whether another one failed


def large_buffers_to_mmap(threshold: int = 1 << 20) -> bool:
    """Make glibc serve every allocation of `threshold` bytes or more with its own mmap, given back to the
    system on free. Its default threshold rises with each freed block up to 32 MB, so tensors of a few MB
    freed by one thread and allocated by another pile up in per-thread heaps: +300 MB of RSS on a 0.7 GB
    model with four writers. Setting it fixes it (and turns the rise off). False where there is no glibc."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


class PipelineError(RuntimeError):
    pass


@dataclass
class Task:
    name: str
    shard: int      # index into the writers
    nbytes: int     # what it holds in host memory while in flight (the larger of input and output)
    reads: bool = True  # False: the value is already in memory (a modules_to_save copy), nothing read


@dataclass
class Timings:
    """Busy seconds per stage (summed over a stage's threads) and the wall time of the whole pipeline."""
    read_s: float = 0.0
    merge_s: float = 0.0
    write_s: float = 0.0
    sync_s: float = 0.0
    wall_s: float = 0.0
    merge_waited_s: float = 0.0     # the merging thread idle, waiting for a read: the pipeline is read-bound
    bytes_read: int = 0
    bytes_written: int = 0
    peak_inflight: int = 0
    budget: int = 0
    readers: int = 0
    writers: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in vars(self).items() if k != "extra"}
        return {**out, **self.extra}


class _Budget:
    """Bytes in flight, bounded; waits give up as soon as the pipeline is aborted."""

    def __init__(self, limit: int, abort: threading.Event) -> None:
        self.limit, self.used, self.peak, self.abort = limit, 0, 0, abort
        self.cond = threading.Condition()

    def acquire(self, n: int) -> bool:
        with self.cond:
            while self.used and self.used + n > self.limit:
                if self.abort.is_set():
                    return False
                self.cond.wait(POLL_S)
            self.used += n
            self.peak = max(self.peak, self.used)
            return True

    def release(self, n: int) -> None:
        with self.cond:
            self.used -= n
            self.cond.notify_all()


class _Failure:
    def __init__(self) -> None:
        self.abort = threading.Event()
        self.first: PipelineError | None = None
        self.lock = threading.Lock()

    def record(self, stage: str, name: str | None, exc: BaseException) -> None:
        with self.lock:
            if self.first is None:
                where = f" ({name})" if name else ""
                self.first = PipelineError(f"merge {stage} failed{where}: {type(exc).__name__}: {exc}")
                self.first.__cause__ = exc
        self.abort.set()

    def raise_if_failed(self) -> None:
        if self.first is not None:
            raise self.first


def run(tasks: list[Task], read: Callable[[Task], object], merge: Callable[[Task, object], object],
        writers: list, budget: int, readers: int = 1, write_threads: int = 4) -> Timings:
    """read(task) → value (reader threads); merge(task, value) → tensor (this thread); writers[task.shard]
    .write_at(task.name, tensor) (writer threads); then every writer's sync() in parallel and finish()."""
    t = Timings(budget=budget, readers=max(1, readers), writers=max(1, write_threads))
    started = time.perf_counter()
    fail = _Failure()
    room = _Budget(budget, fail.abort)
    to_merge: queue.Queue = queue.Queue()
    to_write: queue.Queue = queue.Queue()
    next_task = iter(tasks)
    take_lock, stat_lock = threading.Lock(), threading.Lock()

    def reader() -> None:
        task = None
        try:
            while not fail.abort.is_set():
                with take_lock:  # tasks leave in order; several readers overlap their reads
                    task = next(next_task, None)
                if task is None or not room.acquire(task.nbytes):
                    return
                t0 = time.perf_counter()
                value = read(task)
                with stat_lock:
                    t.read_s += time.perf_counter() - t0
                    t.bytes_read += getattr(value, "nbytes", 0) if task.reads else 0
                to_merge.put((task, value))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            fail.record("reader", task.name if task else None, exc)

    def writer() -> None:
        task = None
        try:
            while True:
                try:
                    item = to_write.get(timeout=POLL_S)
                except queue.Empty:
                    if fail.abort.is_set():
                        return
                    continue
                if item is None or fail.abort.is_set():
                    return
                task, tensor = item
                t0 = time.perf_counter()
                n = writers[task.shard].write_at(task.name, tensor)
                del tensor, item
                with stat_lock:
                    t.write_s += time.perf_counter() - t0
                    t.bytes_written += n
                room.release(task.nbytes)
        except BaseException as exc:  # noqa: BLE001
            fail.record("writer", task.name if task else None, exc)

    threads = [threading.Thread(target=reader, daemon=True, name=f"merge-reader-{i}") for i in range(t.readers)]
    threads += [threading.Thread(target=writer, daemon=True, name=f"merge-writer-{i}") for i in range(t.writers)]
    for th in threads:
        th.start()
    try:
        for _ in range(len(tasks)):
            t0 = time.perf_counter()
            while True:
                fail.raise_if_failed()
                try:
                    task, value = to_merge.get(timeout=POLL_S)
                    break
                except queue.Empty:
                    if not any(th.is_alive() for th in threads[:t.readers]) and to_merge.empty():
                        fail.raise_if_failed()
                        raise PipelineError("merge reader stopped before reading every tensor")
            t1 = time.perf_counter()
            t.merge_waited_s += t1 - t0
            try:
                tensor = merge(task, value)
            except BaseException as exc:  # noqa: BLE001
                fail.record("merge", task.name, exc)
                raise fail.first from exc
            del value
            t.merge_s += time.perf_counter() - t1
            to_write.put((task, tensor))
            del tensor
        for _ in range(t.writers):
            to_write.put(None)
        for th in threads:
            while th.is_alive():
                th.join(POLL_S)
                fail.raise_if_failed()
        fail.raise_if_failed()
        t0 = time.perf_counter()
        _parallel([w.sync for w in writers], fail)
        t.sync_s = time.perf_counter() - t0
        for w in writers:
            w.finish()
    except BaseException:
        fail.abort.set()
        for th in threads:  # each stops within one poll or one tensor; none may write into a closed file
            th.join()
        for w in writers:
            try:
                w.abandon()
            except OSError:
                pass
        raise
    t.peak_inflight = room.peak
    t.wall_s = time.perf_counter() - started
    return t


def _parallel(fns: list[Callable[[], None]], fail: _Failure) -> None:
    """Run each function in its own thread (fsyncs of different files proceed together); errors raised here."""
    def body(fn: Callable[[], None]) -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001
            fail.record("fsync", None, exc)
    threads = [threading.Thread(target=body, args=(fn,), daemon=True) for fn in fns]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    fail.raise_if_failed()
