"""Progress: a redrawn bar with loss, tokens/s and ETA on a terminal; one line per step in a log."""

from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    def __init__(self, total: int, done: int = 0, stream=None, width: int = 24):
        self.total, self.start_step, self.width = max(total, 1), done, width
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.started = time.time()

    def line(self, step: int, epoch: int, loss: float, tokens_per_s: float) -> str:
        elapsed = time.time() - self.started
        done_here = max(step - self.start_step, 1)
        eta = (self.total - step) * elapsed / done_here
        filled = int(self.width * step / self.total)
        bar = "█" * filled + "·" * (self.width - filled)
        return (f"{bar} step {step}/{self.total} epoch {epoch} loss {loss:.4f} {tokens_per_s:,.0f} tok/s "
                f"elapsed {_duration(elapsed)} eta {_duration(eta)}")

    def update(self, step: int, epoch: int, loss: float, tokens_per_s: float) -> None:
        text = self.line(step, epoch, loss, tokens_per_s)
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line that stays (validation loss, checkpoints) without breaking the bar."""
        self.stream.write(("\r\x1b[2K" if self.tty else "") + text + "\n")
        self.stream.flush()
