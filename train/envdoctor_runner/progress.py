"""Progress: a redrawn bar with loss, tokens/s and ETA on a terminal; one line per step in a log.

On a terminal the line is fitted to the width at every redraw (a window can be resized mid-run): a line
longer than the terminal wraps, and the next \\r then redraws only its last row, leaving the rest behind.
Fields are dropped least important first, so that step, loss and the ETA are what stays at any width.
Not tqdm: it is usually there (transformers needs it) but not always, and its bar would need the same field
dropping by hand through bar_format; this is 60 lines with no dependency.
"""

from __future__ import annotations

import os
import shutil
import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _columns(stream) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return shutil.get_terminal_size((80, 24)).columns


class Progress:
    MIN_BAR = 8

    def __init__(self, total: int, done: int = 0, stream=None, width: int = 24, epochs: int | None = None,
                 columns: int | None = None):
        self.total, self.start_step, self.width, self.epochs = max(total, 1), done, width, epochs
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.columns = columns  # None: ask the terminal at each redraw
        self.started = time.time()
        self.drawn = False  # a bar is on the terminal's current line

    def fields(self, step: int, epoch: int, loss: float, tokens_per_s: float) -> dict[str, str]:
        elapsed = time.time() - self.started
        done_here = max(step - self.start_step, 1)
        eta = (self.total - step) * elapsed / done_here
        return {"step": f"step {step}/{self.total}",
                "epoch": f"epoch {epoch}" + (f"/{self.epochs}" if self.epochs else ""),
                "loss": f"loss {loss:.4f}", "rate": f"{tokens_per_s:,.0f} tok/s",
                "elapsed": f"elapsed {_duration(elapsed)}", "eta": f"eta {_duration(eta)}"}

    def bar(self, step: int, width: int) -> str:
        filled = int(width * min(step, self.total) / self.total)
        return "█" * filled + "·" * (width - filled)

    def line(self, step: int, epoch: int, loss: float, tokens_per_s: float, columns: int | None = None) -> str:
        """The whole line, or (columns given) the most of it that fits in columns - 1 characters: the last
        column is left empty because writing into it makes some terminals wrap before the \\r comes."""
        f = self.fields(step, epoch, loss, tokens_per_s)
        order = ["step", "epoch", "loss", "rate", "elapsed", "eta"]

        def text(keep, bar_width):
            parts = ([self.bar(step, bar_width)] if bar_width else []) + [f[k] for k in order if k in keep]
            return " ".join(parts)

        keep, bar_width = set(order), self.width
        if columns is None:
            return text(keep, bar_width)
        room = columns - 1
        for drop in ("elapsed", "epoch", "rate"):  # least useful first: step, loss and eta stay
            if len(text(keep, bar_width)) <= room:
                break
            keep.discard(drop)
        over = len(text(keep, bar_width)) - room
        if over > 0:  # a shorter bar, then none
            bar_width = bar_width - over if bar_width - over >= self.MIN_BAR else 0
        for drop in ("step", "loss"):  # a very narrow terminal: the ETA alone
            if len(text(keep, bar_width)) <= room:
                break
            keep.discard(drop)
        out = text(keep, bar_width)
        if len(out) > room:  # narrower than "eta 1:02:03": the time alone
            out = f["eta"].split(" ", 1)[1]
        return out[max(len(out) - room, 0):]

    def update(self, step: int, epoch: int, loss: float, tokens_per_s: float) -> None:
        if self.tty:
            text = self.line(step, epoch, loss, tokens_per_s, self.columns or _columns(self.stream))
            self.stream.write("\r\x1b[2K" + text)
            self.drawn = True
        else:
            self.stream.write(self.line(step, epoch, loss, tokens_per_s) + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line that stays (validation loss, checkpoints) without breaking the bar."""
        self.stream.write(("\r\x1b[2K" if self.tty else "") + text + "\n")
        self.stream.flush()
        self.drawn = False

    def close(self) -> None:
        """End the bar's line so that what follows starts on a fresh one (a terminal only)."""
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False
