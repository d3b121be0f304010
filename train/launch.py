#!/usr/bin/env python3
"""torchrun, ending the way a single-process run does:

    python train/launch.py TORCHRUN-ARGS…      (the same arguments as `python -m torch.distributed.run`)

torchrun itself turns Ctrl-C / SIGTERM into a SignalException that it raises again once its workers are
stopped: a traceback, after two warnings that restate the signal, under each rank's own message. A rank that
fails gives a ChildFailedError traceback and report under the rank's own traceback. Here:
- the first SIGINT/SIGTERM: torchrun forwards it to the ranks (each in a session of its own, out of the
  terminal's reach) and waits for them (then SIGKILL, after its shutdown timeout), as before; further
  signals are ignored meanwhile (a terminal's Ctrl-C reaches us and `envdoctor train`, which forwards the
  one it got), so that wait is never cut short and no rank outlives us. Exit 128 + the signal's number
  (130, 143), quietly: rank 0 says where to resume. A stop before torchrun has started any rank: one
  line saying so.
- ranks start with SIGINT/SIGTERM blocked, let in once their handler is in place.
- a failed rank: one line naming it (its own error is above) and its exit code.
- no OMP_NUM_THREADS: each rank gets this process's cores divided by the ranks per node (torchrun would set
  1 and print a banner saying so); a user's own value is kept.
Runs in the target interpreter, without envdoctor.
"""

from __future__ import annotations

import argparse
import logging
import os
import runpy
import signal
import sys

# torchrun's warnings on a stop that say only what the ranks' own message says (by their templates: a
# torch that words them otherwise prints them again, nothing worse).
RESTATED = ("Received %s death signal, shutting down workers", "Sending process %s closing signal %s")


class _Restated(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in RESTATED


def _quiet_restated() -> None:
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("torch.distributed.elastic") and isinstance(logger, logging.Logger):
            logger.addFilter(_Restated())


def _first_stop_only(api) -> None:
    """Wrap the handler torchrun installs (it looks the module's function up when it installs it) so that
    only the first signal interrupts the agent, a second one would cut its wait for the ranks short; and
    the warnings that restate the signal are dropped from then on."""
    handler = getattr(api, "_terminate_process_handler", None)
    if handler is None:  # another torch: its own handling, tracebacks included
        return
    stopping: list[int] = []

    def first_only(signum, frame):
        if stopping:
            return
        stopping.append(signum)
        _quiet_restated()
        handler(signum, frame)

    api._terminate_process_handler = first_only


def _stop_early(signum, _frame):
    """Until torchrun installs its handler (importing torch takes seconds): the first signal stops us
    (no rank is running yet), later ones are ignored; one line says so (no rank is there to say it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    print(f"\n{what} before any rank started: nothing was trained; the same command runs it again", flush=True)
    raise SystemExit(128 + signum)


STOPS = {signal.SIGINT, signal.SIGTERM}


def _ranks_start_with_stops_held() -> None:
    """torchrun forwards a stop to ranks that may be starting: CPython hit by SIGINT while it imports its
    site module dies with "Fatal Python error: init_import_site" and a traceback. Started with SIGINT/SIGTERM
    blocked (a mask is inherited through exec), a rank gets such a stop once its handler is in place
    (envdoctor_runner/stopping.release)."""
    try:
        from torch.distributed.elastic.multiprocessing.subprocess_handler.subprocess_handler import SubprocessHandler
        popen, _ = SubprocessHandler._popen, signal.pthread_sigmask
    except (ImportError, AttributeError):  # another torch, or no signal masks: as it is
        return

    def held(self, args, env):
        before = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
        try:
            return popen(self, args, env)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)

    SubprocessHandler._popen = held


def _share_cores(argv: list[str]) -> None:
    """OMP_NUM_THREADS for the ranks, when the user has not set it: the cores we may run on (affinity,
    cgroup cpusets) over the ranks on this node, at least 1. torchrun sets 1 otherwise, with a banner."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    # Read here, not by torchrun's parser: importing torch.distributed.run before runpy runs it draws a warning.
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--nproc-per-node", "--nproc_per_node", default="1")
    nproc = parser.parse_known_args(argv)[0].nproc_per_node
    if not nproc.isdigit():  # "gpu", "auto"…: torchrun counts them
        return
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity (macOS)
        cores = os.cpu_count() or 1
    if int(nproc) > 1:
        os.environ["OMP_NUM_THREADS"] = str(max(1, cores // int(nproc)))


# The runner's exit codes after its own one-line error (2: bad input or setup, 4: output could not be
# written): a launcher line on top would only repeat it.
SAID = {2, 4}


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, _stop_early)
    signal.signal(signal.SIGTERM, _stop_early)
    if hasattr(signal, "pthread_sigmask"):  # envdoctor starts us with them held, as we start the ranks
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]  # train/'s scripts are not modules
    from torch.distributed.elastic.multiprocessing import api
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    _first_stop_only(api)
    _ranks_start_with_stops_held()
    _share_cores(argv)
    sys.argv = [sys.argv[0], *argv]
    try:
        # As `python -m torch.distributed.run` runs it (its own log lines keep their plain format).
        runpy.run_module("torch.distributed.run", run_name="__main__", alter_sys=True)
    except api.SignalException as stop:
        return 128 + int(stop.sigval)
    except ChildFailedError as failed:
        codes = {f.exitcode for f in failed.failures.values()}
        if len(codes) == 1 and codes <= SAID:  # the ranks said why in their one line: nothing to add
            return codes.pop()
        rank, failure = failed.get_first_failure()
        how = f"exit code {failure.exitcode}" if failure.exitcode >= 0 else failure.signal_name()
        print(f"error: rank {rank} (local rank {failure.local_rank}) stopped first, with {how}; its own "
              "output above says why", file=sys.stderr, flush=True)
        return failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode if failure.exitcode < 0 else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
