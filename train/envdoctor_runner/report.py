"""What a run leaves behind: metrics.jsonl, a loss-curve PNG, run_summary.json with provenance."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


_METRICS_LOST: list[int] = []  # steps whose metrics.jsonl row a failed write lost


def log_metrics(out: Path, row: dict) -> bool:
    """Append one row. A failed write (a full disk) is not the end of the run: the row is lost (said once;
    a row cut in half is dropped on --resume), the steps and losses live on in the checkpoints and
    run_summary.json, and the next checkpoint's save decides whether the run can go on."""
    try:
        with open(out / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        return True
    except OSError as exc:
        if not _METRICS_LOST:
            import sys
            print(f"warning: cannot append to {out / 'metrics.jsonl'} ({exc.strerror or exc}): its rows from step "
                  f"{row.get('step')} on are missing", file=sys.stderr, flush=True)
        _METRICS_LOST.append(row.get("step", -1))
        return False


def loss_curve_png(out: Path, losses: list[float], val: list[tuple[int, float]], lrs: list[float] | None = None,
                   width: int = 800, height: int = 480, builtin: bool = False) -> Path:
    """out/loss_curve.png: train loss per step, validation loss per epoch, the learning rate below, with axes,
    ticks and a legend. Drawn by matplotlib where the target interpreter has it, else by pngplot (same
    elements, no dependency); builtin=True forces the latter."""
    path = out / "loss_curve.png"
    tmp = out / ".loss_curve.tmp.png"  # drawn beside it, then renamed: a full disk leaves no half image
    title = _title(losses, val)
    try:
        drawn = False
        if not builtin:
            try:
                _matplotlib_png(tmp, losses, val, lrs, width, height, title)
                drawn = True
            except ImportError:
                pass
        if not drawn:
            from . import pngplot
            tmp.write_bytes(pngplot.loss_plot(losses, val, lrs, width, height, title))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _title(losses: list[float], val: list[tuple[int, float]]) -> str:
    """The numbers a reader looks for first: where the loss started and ended, the last validation loss."""
    parts = []
    if losses:
        n = len(losses)
        parts.append(f"train loss {losses[0]:.3f} -> {losses[-1]:.3f} in {n} step{'s' if n > 1 else ''}")
    finite = [v for _, v in val if v is not None and math.isfinite(v)]
    if finite:
        parts.append(f"validation loss {finite[-1]:.3f}")
    return ", ".join(parts)


def _matplotlib_png(path: Path, losses, val, lrs, width: int, height: int, title: str) -> None:
    # The object API with the Agg canvas: no pyplot, so no GUI backend is chosen and no global state is touched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from .pngplot import smooth
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    if lrs:
        ax, lr_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [7, 3]})
    else:
        ax, lr_ax = fig.subplots(1, 1), None
    steps = range(1, len(losses) + 1)
    if len(losses) >= 30:  # per-step loss is noisy: the raw curve faint, a running mean over it
        w = max(5, len(losses) // 25)
        ax.plot(steps, losses, color="#aac8e6", lw=1, label="train loss (per step)")
        ax.plot(steps, smooth(losses, w), color="#1f77b4", lw=2, label=f"train loss (mean of {w})")
    elif losses:
        ax.plot(steps, losses, color="#1f77b4", lw=2, label="train loss")
    val = [(s, v) for s, v in val if v is not None and math.isfinite(v)]  # NaN: no validation set
    if val:
        ax.plot([s for s, _ in val], [v for _, v in val], color="#e66e0a", lw=2, marker="s", ms=6,
                label="validation loss")
    ax.set_ylabel("loss")
    ax.grid(True, color="#e4e4e4")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", framealpha=1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        ax.set_title(title, fontsize=11)
    if lr_ax is not None:
        first = max(len(losses), len(lrs)) - len(lrs) + 1
        lr_ax.plot(range(first, first + len(lrs)), lrs, color="#2c962c", lw=2, label="learning rate")
        lr_ax.set_ylabel("lr")
        lr_ax.set_ylim(bottom=min(0.0, min(lrs)))
        lr_ax.grid(True, color="#e4e4e4")
        lr_ax.legend(loc="best", framealpha=1)
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    (lr_ax or ax).set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "tokenizers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
