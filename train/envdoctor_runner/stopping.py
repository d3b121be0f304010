"""How a run stops on Ctrl-C (SIGINT) or SIGTERM (Slurm, systemd, `docker stop`, torchrun passing either on
to its ranks): the first signal unwinds the run, later ones are ignored while it does; the process says
where to continue from and exits 128 + the signal's number (130, 143), as a shell reports a killed command."""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

STUCK_S = 10.0  # a stop the main thread has not taken up this long after the signal: it never will
_received: list[int] = []
_finishing = threading.Lock()  # held by whichever thread says the last words: they are said once
last_words = None  # set by the runner once it can say where to resume: (signum) -> exit code


def install() -> None:
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    default = sys.unraisablehook

    def unraisable(info) -> None:  # the stop raised where Python cannot raise (a weakref callback, __del__)
        if not (_received and isinstance(info.exc_value, KeyboardInterrupt)):
            default(info)

    sys.unraisablehook = unraisable
    _watch_for_a_stop_not_taken_up()


def _stop(signum, _frame):
    _received.append(signum)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def release() -> None:
    """Let SIGINT/SIGTERM in. envdoctor and train/launch.py start the runner with them blocked: one that
    came while the interpreter started (where CPython dies with "Fatal Python error: init_import_site" and
    a traceback) waits, and is delivered here, to the handler (a KeyboardInterrupt raised here)."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def received() -> int | None:
    return _received[0] if _received else None


def check() -> None:
    """At the loop's safe points: the stop, if its KeyboardInterrupt was lost (raised inside a weakref
    callback or an import, where Python prints and drops it)."""
    if _received and not _finishing.locked():
        raise KeyboardInterrupt


def exit_now(code: int) -> None:
    """Flush what was printed and end the process at once (os._exit): no interpreter teardown, whose
    joins and C++ destructors race a stuck main thread or a live process group's threads."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _watch_for_a_stop_not_taken_up() -> None:
    """Python runs a signal's handler only between bytecodes of the main thread: one blocked in C++ — a
    rendezvous or collective waiting for a rank that has already left — never gets there (torchrun would
    SIGKILL it 30 s later, with a warning; one process alone would hang until envdoctor kills it), and a
    KeyboardInterrupt raised where Python drops it is lost. The C level of the handler still writes the
    signal's number to the wakeup fd: a thread reading it gives the main thread STUCK_S to take the stop
    up, and otherwise says the last words and ends the process itself (the checkpoints are atomic: a
    half-written one is never used)."""
    try:
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    except (OSError, ValueError, AttributeError):  # not the main thread, or no pipes: the handler alone
        return

    def watch() -> None:
        # The wakeup fd gets every signal with a Python handler (a library's SIGALRM, SIGCHLD, SIGUSR1…):
        # only one of _stop's starts the count. Its byte is written before _stop runs in the main thread
        # (never, when that thread is stuck in C++): the handler in place says whose it is.
        while True:
            signum = os.read(read_end, 1)[0]
            if signum in _received or signal.getsignal(signum) is _stop:
                break
        deadline = time.monotonic() + STUCK_S
        while time.monotonic() < deadline:
            if _finishing.locked():
                return  # the main thread is saying them
            time.sleep(0.1)
        if not _finishing.acquire(blocking=False):
            return
        exit_now(last_words(signum) if last_words else _before_start(sys.argv, signum))

    threading.Thread(target=watch, daemon=True, name="envdoctor-stop").start()


def _take_up() -> None:
    """The main thread takes the stop up: it says the last words, unless the watcher already is (and is
    about to end the process)."""
    if not _finishing.acquire(blocking=False):
        while True:
            time.sleep(60)


def run(main) -> int | None:
    """main()'s exit code, or None when a signal stopped it (the caller then says the last words). A rank
    waiting in a collective may see the peer that stopped first leave (a gloo error) just before its own
    signal arrives: under a launcher an error waits a moment for that signal (a real error is raised as it
    was); any error after a stop is the stop (a lost KeyboardInterrupt can leave a half-imported module)."""
    try:
        try:
            code = main()
            # The run is complete (its results written): a signal while the process exits (torch's teardown
            # takes a while) changes nothing, rather than ending a finished run in a traceback and 130/143.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            return code
        except KeyboardInterrupt:
            raise
        except Exception:
            if received() is None and "LOCAL_RANK" in os.environ:
                time.sleep(2.0)
            if received() is None:
                raise
            raise KeyboardInterrupt from None
    except KeyboardInterrupt:
        _take_up()
        return None


def die_with_launcher() -> None:
    """A rank under a launcher (torchrun sets LOCAL_RANK): killed with it. torchrun stops its ranks itself
    when it can; SIGKILLed (a second Ctrl-C to envdoctor, the OOM killer) it cannot, and a rank left
    alone would train on, or wait in a collective, holding its GPU. Linux only; elsewhere nothing changes."""
    if "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        parent = os.getppid()
        if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the launcher was already gone before prctl took effect
        os._exit(128 + signal.SIGKILL)


def _what(signum: int) -> str:
    return "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"


def _resume_command(config_path: str | None) -> str:
    """envdoctor's own (with its --output-dir, --python…), else one from the config's path."""
    command = os.environ.get("ENVDOCTOR_RESUME_COMMAND")
    if command:
        return command
    return f"envdoctor train {shlex.quote(config_path)} --resume" if config_path else "envdoctor train CONFIG --resume"


def message(command: str | None, latest: Path | None, signum: int) -> str:
    """Rank 0's one line: the signal, the last checkpoint and the command that continues from it (the
    runner's resume_command: envdoctor's own, else the config with its --output-dir)."""
    if latest is None:
        return f"\n{_what(signum)}: no checkpoint was written yet; start again with the same command"
    return f"\n{_what(signum)}: the last checkpoint is {latest.name}; continue with: {command or _resume_command(None)}"


def before_start(argv: list[str]) -> int:
    """Stopped while the runner's modules (torch) were being imported: nothing of this run was done."""
    _take_up()
    return _before_start(argv, received() or signal.SIGINT)


def speaks() -> bool:
    """Whether this process says how a stopped run continues: rank 0, and on a run of several nodes each
    node's first rank too (torchrun's LOCAL_RANK), since every node continues with its own command."""
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))) == 0


def tell(text: str) -> None:
    """The last words, in the run log and on the terminal: a rank other than 0 prints only to its own log
    (runlog) while that is open, so another node's first rank writes to the terminal itself too."""
    print(text, flush=True)
    if int(os.environ.get("RANK", "0")) != 0 and sys.stdout is not sys.__stdout__ and sys.__stdout__ is not None:
        print(text, file=sys.__stdout__, flush=True)


def _before_start(argv: list[str], signum: int) -> int:
    if speaks():
        then = f"continue with: {_resume_command(None)}" if "--resume" in argv else "start again with the same command"
        print(f"\n{_what(signum)} before the run started; {then}", flush=True)
    return exit_code(signum)


def exit_code(signum: int) -> int:
    return 128 + int(signum)
