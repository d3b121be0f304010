"""The run log: everything the runner prints goes to OUTPUT_DIR/train.log; the terminal gets what a user can act on.

    log = runlog.start(out)     # first, before torch/transformers are imported; the rank comes from $RANK
    ...
    log.done(adapter, plot, sys.executable)    # the closing block (main process only)
    log.close()

sys.stdout and sys.stderr are replaced by tees, so print(), Python warnings, `logging` (transformers' own handler
and the last-resort handler bitsandbytes' records reach) and tracebacks all land in the log. Library noise a user
cannot act on (NOISE, deprecation warnings) is kept out of the terminal but stays in the log. Output written
straight to file descriptors 1 and 2 by C/Rust code (the tokenizers trainer's progress) bypasses the tees: it is
turned off where it starts instead (BpeTrainer(show_progress=False)).

Other processes of a distributed run (rank > 0) write train.rank{N}.log and print nothing but a crash.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import time
import traceback
import warnings
from pathlib import Path

# Complete terminal lines that are dropped there (kept in train.log), and where each comes from.
NOISE = [
    # bitsandbytes.backends.cpu.ops: `logging` warning when the optional `kernels` package is absent on an
    # AVX512-BF16 CPU; bitsandbytes falls back to its own kernel, nothing for the user to do.
    re.compile(r"Failed to load CPU gemm_4bit_forward from kernels-community"),
    # transformers' logger (warning_once): gradient checkpointing turns the KV cache off during training,
    # which is what training wants. Old text "`use_cache=True` is incompatible ...", 5.x "Caching is ...".
    re.compile(r"incompatible with gradient checkpointing"),
]
# Python warnings of these categories come from library internals (transformers renaming its API, torch
# deprecations) and are not the user's to fix: log only.
QUIET_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
CLEAR = "\r\x1b[2K"


class _Screen:
    """The one terminal both tees share: whether a line is left open (a progress bar being redrawn, or a
    print without newline), so that text from elsewhere does not get glued onto it."""

    def __init__(self):
        self.open_by = None      # the tee whose text the cursor sits after (None: at a line start)
        self.redraw = False      # the open line is a \r-redrawn one (a bar): overwrite it, do not keep it

    def write(self, tee: _Tee, text: str) -> None:
        if not text:
            return
        if self.open_by is not None and not text.startswith(("\r", "\n")):  # (a newline just ends it)
            if self.redraw:  # a bar: clear it; its next update draws it again below the new text
                tee.real.write(CLEAR if tee.real.isatty() else "\n")
                self.redraw = False
            elif self.open_by is not tee:  # someone else's unfinished line: end it
                tee.real.write("\n")
        tee.real.write(text)
        tee.real.flush()
        tail = text.rsplit("\n", 1)[-1]
        if text.endswith("\n"):
            self.open_by, self.redraw = None, False
        else:
            self.open_by = tee
            self.redraw = self.redraw or "\r" in tail or text.startswith("\r")


class _Tee:
    """A text stream that writes to the log and (filtered) to the real stream it replaces."""

    def __init__(self, log: RunLog, real, terminal: bool):
        self.log, self.real, self.terminal = log, real, terminal
        self.pending = ""  # terminal text not yet ended by a newline (filtered per complete line)

    # -- the io.TextIOBase surface libraries touch ------------------------------------------------
    encoding = property(lambda self: getattr(self.real, "encoding", "utf-8"))
    errors = property(lambda self: getattr(self.real, "errors", "strict"))

    def isatty(self) -> bool:
        return self.terminal and self.real.isatty()

    def fileno(self) -> int:  # faulthandler, os.get_terminal_size: the real descriptor
        return self.real.fileno()

    def writable(self) -> bool:
        return True

    def __getattr__(self, name):  # buffer, mode, ...: the real stream's
        return getattr(self.real, name)

    def write(self, text: str) -> int:
        self.log._to_log(self, text)
        if self.terminal:
            self.pending += text
            if "\n" in self.pending:
                lines, self.pending = self.pending.rsplit("\n", 1)
                self.log._screen.write(self, "".join(
                    self._final(line) + "\n" for line in lines.split("\n") if not self.log._noise(line)))
        return len(text)

    def _final(self, line: str) -> str:
        """Off a terminal (a pipe, a CI log) a \r-redrawn line (a library's tqdm bar) is shown as its last state."""
        return line if self.real.isatty() else line.rsplit("\r", 1)[-1]

    def flush(self) -> None:
        # On a terminal a flush shows an unfinished line as it is (a progress bar redraw), unfiltered; off a
        # terminal nothing redraws, so the line waits for its newline.
        if self.terminal and self.pending and self.real.isatty():
            text, self.pending = self.pending, ""
            self.log._screen.write(self, text)
        if self.terminal:
            self.real.flush()


class RunLog:
    def __init__(self, path: Path | None, main: bool, rank: int):
        self.path, self.main, self.rank = path, main, rank
        self.silenced = 0  # lines and warnings kept out of the terminal (they are in the log)
        self._file = open(path, "a", encoding="utf-8") if path else None
        self._log_open = None  # the tee whose unfinished line the log file ends with
        self._screen = _Screen()
        self._saved = (sys.stdout, sys.stderr, warnings.showwarning, sys.excepthook)
        self.out = _Tee(self, sys.stdout, terminal=main)
        self.err = _Tee(self, sys.stderr, terminal=main)
        self._handlers: list[tuple[logging.StreamHandler, object]] = []
        self.closed = False

    # -- what the runner calls ---------------------------------------------------------------------
    def say(self, text: str = "") -> None:
        """A line for the user (and the log); nothing on ranks other than the main one."""
        self.out.write(text + "\n")
        self.out.flush()

    def done(self, adapter, plot, python: str | None = None) -> None:
        """The closing block (see done_lines), counting what was kept out of the terminal."""
        if self.path is not None:
            for line in done_lines(self.path.parent, adapter, plot, python, self.silenced):
                self.say(line)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for tee in (self.out, self.err):
            tee.flush()
            if tee.terminal and tee.pending:  # off a terminal: the unfinished last line
                self._screen.write(tee, tee._final(tee.pending))
                tee.pending = ""
        if self._screen.open_by is not None and self._screen.redraw:
            self._screen.open_by.real.write("\n")  # leave the last bar on screen, the shell prompt below it
        sys.stdout, sys.stderr, warnings.showwarning, sys.excepthook = self._saved
        for handler, stream in self._handlers:
            handler.setStream(stream)
        if self._file:
            try:
                if self._log_open is not None:
                    self._file.write("\n")
                self._file.close()
            except OSError as exc:
                self._lost(exc)
            self._file = None

    # -- plumbing ------------------------------------------------------------------------------------
    def _noise(self, line: str) -> bool:
        if any(p.search(line) for p in NOISE):
            self.silenced += 1
            return True
        return False

    def _to_log(self, tee: _Tee, text: str) -> None:
        """Plain text in the file: escapes dropped, each \\r redraw on a line of its own (one line per step)."""
        if not self._file:
            return
        try:
            self._write_log(tee, text)
        except OSError as exc:  # a full disk: the run goes on (it says so itself where it matters), unlogged
            self._lost(exc)

    def _lost(self, exc: OSError) -> None:
        """The log file cannot be written: stop writing it, say so once on the real stream."""
        file, self._file = self._file, None
        try:
            file.close()
        except OSError:  # its buffer cannot be flushed either
            pass
        if self.main:
            real = self._saved[1]
            real.write(f"warning: {self.path}: cannot write ({exc.strerror or exc}); the log stops here\n")
            real.flush()

    def _write_log(self, tee: _Tee, text: str) -> None:
        text = _ANSI.sub("", text)
        if self._log_open is not None and self._log_open is not tee and text:
            self._file.write("\n")  # another stream's unfinished line: end it
            self._log_open = None
        for i, piece in enumerate(text.split("\r")):
            if i and self._log_open is not None:
                self._file.write("\n")
                self._log_open = None
            if piece:
                self._file.write(piece)
                self._log_open = None if piece.endswith("\n") else tee
        self._file.flush()

    def _showwarning(self, message, category, filename, lineno, file=None, line=None):
        text = warnings.formatwarning(message, category, filename, lineno, line)
        if issubclass(category, QUIET_WARNINGS) or not self.main:
            self.silenced += self.main
            self._to_log(self.err, text)
        else:
            self.err.write(text)

    def _excepthook(self, kind, value, tb):
        text = "".join(traceback.format_exception(kind, value, tb))
        self.err.write(text)  # main: terminal and log; other ranks: the log ...
        self.err.flush()
        if not self.main:  # ... and a crash is the one thing they print, so that it is not silent
            real = self._saved[1]
            real.write("".join(f"[rank {self.rank}] {line}\n" for line in text.splitlines()))
            real.flush()

    def _install(self) -> None:
        sys.stdout, sys.stderr = self.out, self.err
        warnings.showwarning = self._showwarning
        sys.excepthook = self._excepthook
        # Handlers made before we started (a library imported early) hold the real stderr: point them here.
        loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                           if isinstance(lg, logging.Logger)]
        real = (self._saved[0], self._saved[1], sys.__stdout__, sys.__stderr__)
        for lg in loggers:
            for h in lg.handlers:
                if type(h) is logging.StreamHandler and any(h.stream is r for r in real):
                    tee = self.out if h.stream in (self._saved[0], sys.__stdout__) else self.err
                    self._handlers.append((h, h.setStream(tee)))
        if self._file:
            try:
                self._file.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n")
                self._file.flush()
            except OSError as exc:
                self._lost(exc)
        atexit.register(self.close)


def start(out_dir: Path | str, main: bool | None = None, rank: int | None = None, rank_logs: bool = True) -> RunLog:
    """Tee this process's output into out_dir/train.log (rank > 0: train.rank{N}.log, or nothing with
    rank_logs=False). Appends: a resumed run continues the same log after a dated header line.
    rank defaults to $RANK (set by torchrun), so this can run before torch is imported; main to rank == 0."""
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    main = rank == 0 if main is None else main
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "train.log" if main else (out_dir / f"train.rank{rank}.log" if rank_logs else None)
    log = RunLog(path, main, rank)
    log._install()
    return log


def done_lines(out_dir: Path | str, adapter: Path | str, plot: Path | str | None, python: str | None = None,
               silenced: int = 0) -> list[str]:
    """The closing block: where the results are, and the next two commands alone on their lines (to paste)."""
    import shlex
    out_dir = Path(out_dir)
    here = f" --python {shlex.quote(python)}" if python else ""  # pasted into a shell: quoted
    lines = ["", f"done. LoRA adapter: {adapter}"]
    if plot:
        lines.append(f"  loss curve:  {plot}")
    hidden = f"  ({silenced} library warning{'s' if silenced > 1 else ''} shown only there)" if silenced else ""
    lines.append(f"  full log:    {out_dir / 'train.log'}{hidden}")
    lines += ["next: merge adapter and base into one model, then score it against the base:",
              f"  envdoctor merge {shlex.quote(str(out_dir))}{here}",
              f"  envdoctor eval {shlex.quote(str(out_dir))}{here}"]
    return lines
