"""How a run stops on Ctrl-C (SIGINT) or SIGTERM (Slurm, systemd, `docker stop`, torchrun passing either on
to its ranks): the first signal unwinds the run, later ones are ignored while it does; the process says
where to continue from and exits 128 + the signal's number (130, 143), as a shell reports a killed command."""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import sys
import time
from pathlib import Path

_received: list[int] = []


def install() -> None:
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)


def _stop(signum, _frame):
    _received.append(signum)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def received() -> int | None:
    return _received[0] if _received else None


def run(main) -> int | None:
    """main()'s exit code, or None when a signal stopped it. A rank waiting in a collective may see the peer
    that stopped first leave (a gloo error) just before its own signal arrives: under a launcher an error
    waits a moment for that signal (a real error is raised as it was), and a KeyboardInterrupt raised while
    an error is handled ends up here too."""
    try:
        try:
            return main()
        except KeyboardInterrupt:
            raise
        except Exception:
            if received() is None and "LOCAL_RANK" in os.environ:
                time.sleep(2.0)
            if received() is None:
                raise
            raise KeyboardInterrupt from None
    except KeyboardInterrupt:
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


def message(command: str | None, config_path: str | None, latest: Path | None, signum: int) -> str:
    """Rank 0's one line: the signal, the last checkpoint and the command that continues from it
    (`command`: envdoctor's own, with its --output-dir, --python…; else from the config's path)."""
    how = command or (f"envdoctor train {shlex.quote(config_path)} --resume" if config_path else
                      "envdoctor train CONFIG --resume")
    what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    if latest is None:
        return f"\n{what}: no checkpoint was written yet; start again with the same command"
    return f"\n{what}: the last checkpoint is {latest.name}; continue with: {how}"


def exit_code(signum: int) -> int:
    return 128 + int(signum)
