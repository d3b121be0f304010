"""System.stream(stops_held=True): a stop that reaches envdoctor alone while the child is being started (its
SIGINT/SIGTERM blocked then) is still forwarded to the child, which stops itself and is waited for."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from envdoctor.system import Stopped, System

# The child lets the stops in once its handler is in place, as train/qlora.py does; it exits 7 on one.
CHILD = ("import signal, sys, time\n"
         "signal.signal(signal.SIGINT, lambda *a: sys.exit(7))\n"
         "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
         "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})\n"
         "time.sleep(60)\n"
         "sys.exit(0)\n")


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_the_child_starts_reaches_the_child(monkeypatch, sig):
    assert threading.current_thread() is threading.main_thread()
    real = subprocess.Popen
    started = []

    def popen_then_stop(*args, **kwargs):  # the stop lands while stream still holds the signals blocked
        proc = real(*args, **kwargs)
        started.append(proc)
        os.kill(os.getpid(), sig)
        return proc

    monkeypatch.setattr(subprocess, "Popen", popen_then_stop)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(Stopped) as stop:
            System().stream([sys.executable, "-c", CHILD], stops_held=True)
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert stop.value.child_code == 7 and stop.value.exit_code == 128 + sig  # forwarded, and it stopped itself
    assert signal.getsignal(signal.SIGTERM) == previous
