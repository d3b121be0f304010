"""Start the target interpreter's probe before the doctor imports its checks.

The probe is a separate process (~40 ms) and the doctor's own imports (~50 ms) hold one core: started
first, the two overlap on a machine with two cores instead of running one after the other. `start` is
called by `check` right after it knows the interpreter; `take` hands the result to the python provider,
which runs the probe itself when nothing was started for exactly that command. Imports nothing heavy.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_started: dict[tuple, tuple[threading.Thread, list]] = {}


def start(system, argv: list[str], timeout: float) -> None:
    """Start `argv` now, in this thread (`system.spawn`: a thread of its own would first have to win the GIL
    from the imports that follow), and collect its output in a daemon thread (the pipes never fill; daemon:
    a check that never needs it cannot hold the process at exit)."""
    key = (id(system), tuple(argv))
    box: list = []
    with _lock:
        if key in _started:
            return
        wait = system.spawn(argv, timeout)
        thread = threading.Thread(target=lambda: box.append(wait()), daemon=True)
        _started[key] = (thread, box)
    thread.start()


def take(system, argv: list[str]):
    """The result of the run started for exactly this command on this system, or None (not started, or
    already taken: a second caller probes again, as it would have without this module)."""
    with _lock:
        entry = _started.pop((id(system), tuple(argv)), None)
    if entry is None:
        return None
    thread, box = entry
    thread.join()  # bounded: the wait enforces the same timeout the caller would have used
    return box[0] if box else None
