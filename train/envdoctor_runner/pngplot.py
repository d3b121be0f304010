"""A loss plot without a plotting library: an RGB canvas, a small bitmap font, tick choice and a PNG writer.

Used where the target interpreter has no matplotlib (it is never required). The figure has what the
matplotlib one has: a loss panel (train loss, smoothed when long, validation loss, legend), a learning-rate
panel below it on the same steps, numbered ticks on every axis and axis labels.
"""

from __future__ import annotations

import math
import struct
import zlib

# A 5-wide bitmap font of our own: 7 rows from the cap line to the baseline, an 8th row for descenders.
# Upper-case letters are drawn as lower-case (every string here is ours).
_GLYPHS = {
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": "####. ....# ....# .###. ....# ....# ####.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
    "a": "..... ..... .###. ....# .#### #...# .####",
    "b": "#.... #.... #.##. ##..# #...# #...# ####.",
    "c": "..... ..... .###. #.... #.... #...# .###.",
    "d": "....# ....# .##.# #..## #...# #...# .####",
    "e": "..... ..... .###. #...# ##### #.... .###.",
    "f": "..##. .#..# .#... ###.. .#... .#... .#...",
    "g": "..... ..... .#### #...# #...# .#### ....# .###.",
    "h": "#.... #.... #.##. ##..# #...# #...# #...#",
    "i": "..#.. ..... .##.. ..#.. ..#.. ..#.. .###.",
    "j": "...#. ..... ..##. ...#. ...#. ...#. #..#. .##..",
    "k": "#.... #.... #..#. #.#.. ##... #.#.. #..#.",
    "l": "##... .#... .#... .#... .#... .#... ..##.",
    "m": "..... ..... ##.#. #.#.# #.#.# #...# #...#",
    "n": "..... ..... #.##. ##..# #...# #...# #...#",
    "o": "..... ..... .###. #...# #...# #...# .###.",
    "p": "..... ..... ####. #...# #...# ####. #.... #....",
    "q": "..... ..... .#### #...# #...# .#### ....# ....#",
    "r": "..... ..... #.##. ##..# #.... #.... #....",
    "s": "..... ..... .###. #.... .###. ....# ####.",
    "t": ".#... .#... ###.. .#... .#... .#..# ..##.",
    "u": "..... ..... #...# #...# #...# #..## .##.#",
    "v": "..... ..... #...# #...# #...# .#.#. ..#..",
    "w": "..... ..... #...# #...# #.#.# #.#.# .#.#.",
    "x": "..... ..... #...# .#.#. ..#.. .#.#. #...#",
    "y": "..... ..... #...# #...# #...# .#### ....# .###.",
    "z": "..... ..... ##### ...#. ..#.. .#... #####",
    ".": "..... ..... ..... ..... ..... .##.. .##..",
    ",": "..... ..... ..... ..... .##.. .##.. ..#.. .#...",
    "-": "..... ..... ..... .###. ..... ..... .....",
    "+": "..... ..#.. ..#.. ##### ..#.. ..#.. .....",
    ":": "..... .##.. .##.. ..... .##.. .##.. .....",
    "(": "...#. ..#.. .#... .#... .#... ..#.. ...#.",
    ")": ".#... ..#.. ...#. ...#. ...#. ..#.. .#...",
    "/": "....# ....# ...#. ..#.. .#... #.... #....",
    "=": "..... ..... ##### ..... ##### ..... .....",
    ">": ".#... ..#.. ...#. ....# ...#. ..#.. .#...",
    "%": "##..# ##..# ...#. ..#.. .#... #..## #..##",
    " ": "",
}
FONT = {ch: [row for row in rows.split()] for ch, rows in _GLYPHS.items()}
ADVANCE, CAP, LINE = 6, 7, 9  # pixels at scale 1: per character, cap height, line height


def text_width(s: str, scale: int) -> int:
    return max(len(s) * ADVANCE - 1, 0) * scale


class Canvas:
    def __init__(self, width: int, height: int, bg=(255, 255, 255)):
        self.width, self.height = width, height
        self.px = bytearray(bytes(bg) * (width * height))

    def dot(self, x: int, y: int, color) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = 3 * (y * self.width + x)
            self.px[i:i + 3] = bytes(color)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color) -> None:
        """Filled, corners inclusive."""
        x0, y0, x1, y1 = (int(round(v)) for v in (x0, y0, x1, y1))
        x0, x1 = max(min(x0, x1), 0), min(max(x0, x1), self.width - 1)
        y0, y1 = max(min(y0, y1), 0), min(max(y0, y1), self.height - 1)
        row = bytes(color) * (x1 - x0 + 1)
        for y in range(y0, y1 + 1):
            i = 3 * (y * self.width + x0)
            self.px[i:i + len(row)] = row

    def line(self, x0, y0, x1, y1, color, thick: int = 1, dash: int = 0) -> None:
        x0, y0, x1, y1 = (int(round(v)) for v in (x0, y0, x1, y1))
        n = max(abs(x1 - x0), abs(y1 - y0), 1)
        for t in range(n + 1):
            if dash and (t // dash) % 2:
                continue
            x, y = x0 + (x1 - x0) * t / n, y0 + (y1 - y0) * t / n
            xi, yi = int(round(x)), int(round(y))
            if thick == 1:
                self.dot(xi, yi, color)
            else:
                self.rect(xi - (thick - 1) // 2, yi - (thick - 1) // 2, xi + thick // 2, yi + thick // 2, color)

    def polyline(self, points, color, thick: int = 1) -> None:
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            self.line(x0, y0, x1, y1, color, thick)
        if len(points) == 1:  # a lone point (one step, or one between NaNs): visible as a dot
            self.rect(points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2, color)

    def text(self, x: int, y: int, s: str, color, scale: int = 2, anchor: str = "lt", vertical: bool = False):
        """anchor: l/c/r horizontally, t/m/b vertically (b = baseline); vertical reads bottom to top."""
        w, h = text_width(s, scale), CAP * scale
        dx = {"l": 0, "c": -w // 2, "r": -w}[anchor[0]]
        dy = {"t": 0, "m": -h // 2, "b": -h}[anchor[1]]
        for k, ch in enumerate(s):
            rows = FONT.get(ch.lower(), FONT["-"] if ch not in FONT else FONT[ch])
            for r, bits in enumerate(rows):
                for c, bit in enumerate(bits):
                    if bit != "#":
                        continue
                    u, v = (k * ADVANCE + c) * scale + dx, r * scale + dy  # along the text, down from its top
                    if vertical:  # rotated a quarter turn left: along the text is up the page
                        self.rect(x + v, y - u - scale + 1, x + v + scale - 1, y - u, color)
                    else:
                        self.rect(x + u, y + v, x + u + scale - 1, y + v + scale - 1, color)

    def png(self) -> bytes:
        stride = 3 * self.width
        raw = b"".join(b"\x00" + bytes(self.px[y * stride:(y + 1) * stride]) for y in range(self.height))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def nice_ticks(lo: float, hi: float, n: int = 5, integer: bool = False) -> list[float]:
    """About n round values (1, 2, 2.5 or 5 × 10^k apart; whole numbers if integer) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi - lo <= 0:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw and not (integer and m * mag % 1))
    first = math.floor(lo / step + 1e-9) * step
    ticks, v = [], first
    while v <= hi + step * 0.999:
        ticks.append(round(v, 12))
        v += step
    return ticks


def tick_label(v: float, step: float) -> str:
    if v == 0:
        return "0"
    if step >= 1 and float(v).is_integer():
        return f"{int(v):,}"
    if step >= 1e-3:
        decimals = max(0, -math.floor(math.log10(step) + 1e-9))
        decimals += 1 if round(step * 10 ** decimals, 6) % 1 else 0  # 2.5-steps need one more digit
        return f"{v:.{decimals}f}"
    mant, exp = f"{v:.1e}".split("e")
    return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"


def smooth(values: list[float], window: int) -> list[float]:
    """Centered running mean over the finite values (the window shrinks at the ends; NaN where none)."""
    half, sums, counts = window // 2, [0.0], [0]
    for v in values:
        ok = v is not None and math.isfinite(v)
        sums.append(sums[-1] + (v if ok else 0.0))
        counts.append(counts[-1] + ok)
    out = []
    for i in range(len(values)):
        a, b = max(0, i - half), min(len(values), i + half + 1)
        n = counts[b] - counts[a]
        out.append((sums[b] - sums[a]) / n if n else float("nan"))
    return out


TRAIN, TRAIN_RAW, VAL, LR = (31, 119, 180), (170, 200, 230), (230, 110, 10), (44, 150, 44)
INK, AXIS, GRID = (30, 30, 30), (90, 90, 90), (228, 228, 228)


class Panel:
    """A plot area (pixel box) with data limits; maps data to pixels and draws its own axes."""

    def __init__(self, c: Canvas, box, xlim, ylim, yticks):
        self.c, self.box, self.xlim, self.ylim, self.yticks = c, box, xlim, ylim, yticks

    def xy(self, x, y):
        (x0, y0, x1, y1), (a, b), (lo, hi) = self.box, self.xlim, self.ylim
        return x0 + (x1 - x0) * (x - a) / ((b - a) or 1), y1 - (y1 - y0) * (y - lo) / ((hi - lo) or 1)

    def curve(self, xs, ys, color, thick: int) -> list[tuple[float, float]]:
        """A line through the finite points (a NaN loss breaks it); the pixel points drawn."""
        run, drawn = [], []
        for x, y in zip(xs, ys):
            if y is not None and math.isfinite(y):
                run.append(self.xy(x, y))
                continue
            self.c.polyline(run, color, thick)
            drawn += run
            run = []
        self.c.polyline(run, color, thick)
        return drawn + run

    def frame(self, xticks, ylabel: str, label_x: int, xlabels: bool):
        c, (x0, y0, x1, y1) = self.c, self.box
        ystep = self.yticks[1] - self.yticks[0] if len(self.yticks) > 1 else 1
        xstep = xticks[1] - xticks[0] if len(xticks) > 1 else 1
        for t in self.yticks:
            _, py = self.xy(self.xlim[0], t)
            c.line(x0, py, x1, py, GRID)
            c.line(x0 - 5, py, x0, py, AXIS)
            c.text(x0 - 9, int(py), tick_label(t, ystep), INK, 2, "rm")
        for t in xticks:
            px, _ = self.xy(t, self.ylim[0])
            c.line(px, y0, px, y1, GRID)
            c.line(px, y1, px, y1 + 5, AXIS)
            if xlabels:
                c.text(int(px), y1 + 10, tick_label(t, xstep), INK, 2, "ct")
        for a, b, d, e in ((x0, y0, x0, y1), (x0, y1, x1, y1), (x1, y0, x1, y1), (x0, y0, x1, y0)):
            c.line(a, b, d, e, AXIS)
        c.text(label_x, (y0 + y1) // 2, ylabel, INK, 2, "cm", vertical=True)


def _limits(values, pad_frac=0.06):
    """Data limits with a margin, and the round ticks inside them."""
    lo, hi = min(values), max(values)
    pad = (hi - lo) * pad_frac or abs(hi) * 0.1 or 1.0
    lo, hi = lo - pad, hi + pad
    return (lo, hi), [t for t in nice_ticks(lo, hi, 7) if lo <= t <= hi]


def _widest(ticks) -> int:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1
    return max((text_width(tick_label(t, step), 2) for t in ticks), default=0)


def loss_plot(losses: list[float], val: list[tuple[int, float]], lrs: list[float] | None,
              width: int = 800, height: int = 480, title: str = "") -> bytes:
    """The figure as PNG bytes: losses[i] is step i + 1's, val holds (step, loss), lrs[i] step i + 1's rate
    (a shorter lrs is aligned to the last step: a run resumed from a checkpoint that did not keep them)."""
    c = Canvas(width, height)
    val = [(s, v) for s, v in val if v is not None and math.isfinite(v)]  # NaN: a run without validation set
    lrs = [v for v in (lrs or []) if v is not None and math.isfinite(v)]
    finite = [v for v in losses if v is not None and math.isfinite(v)] + [v for _, v in val]
    steps = max(len(losses), max((s for s, _ in val), default=0), len(lrs), 1)
    xlim = (0, steps + max(steps // 40, 1))  # a margin: the last point is not drawn on the frame
    xticks = [t for t in nice_ticks(0, steps, 6, integer=True) if xlim[0] <= t <= xlim[1]]
    ylim, yticks = _limits(finite or [0.0, 1.0])
    if lrs:
        lr_lim = (min(min(lrs), 0.0), max(lrs) * 1.1 or 1.0)  # from 0: warmup and decay read against zero
        lr_ticks = [t for t in nice_ticks(*lr_lim, 5) if lr_lim[0] <= t <= lr_lim[1]]
    # Room on the left for the rotated axis label and the widest tick label of either panel.
    widest = max(_widest(yticks), _widest(lr_ticks) if lrs else 0)
    label_x = 8 + CAP
    left = label_x + CAP + 12 + widest + 10
    xstep = xticks[1] - xticks[0] if len(xticks) > 1 else 1
    right = width - 12 - max(text_width(tick_label(xticks[-1], xstep), 2) // 2, 12)  # the last x label fits
    top, bottom = (40 if title else 16), height - 56
    split = top + int((bottom - top) * (0.68 if lrs else 1.0))
    if title:
        c.text(width // 2, 12, title, INK, 2, "ct")
    loss_panel = Panel(c, (left, top, right, split - (30 if lrs else 0)), xlim, ylim, yticks)
    loss_panel.frame(xticks, "loss", label_x, xlabels=not lrs)
    legend, drawn = [], []
    if losses:
        xs = range(1, len(losses) + 1)
        if len(losses) >= 30:  # per-step loss is noisy: the raw curve faint, a running mean over it
            w = max(5, len(losses) // 25)
            drawn += loss_panel.curve(xs, losses, TRAIN_RAW, 1)
            loss_panel.curve(xs, smooth(losses, w), TRAIN, 2)
            legend += [("train loss (per step)", TRAIN_RAW, "line"), (f"train loss (mean of {w})", TRAIN, "line")]
        else:
            drawn += loss_panel.curve(xs, losses, TRAIN, 2)
            legend.append(("train loss", TRAIN, "line"))
    if val:
        vpts = loss_panel.curve([s for s, _ in val], [v for _, v in val], VAL, 2)
        for x, y in vpts:
            c.rect(int(x) - 4, int(y) - 4, int(x) + 4, int(y) + 4, VAL)
        drawn += vpts
        legend.append(("validation loss", VAL, "marker"))
    if legend:
        _legend(c, loss_panel.box, legend, drawn)
    if lrs:
        first = steps - len(lrs) + 1
        lr_panel = Panel(c, (left, split, right, bottom), xlim, lr_lim, lr_ticks)
        lr_panel.frame(xticks, "lr", label_x, xlabels=True)
        pts = lr_panel.curve(range(first, first + len(lrs)), lrs, LR, 2)
        _legend(c, lr_panel.box, [("learning rate", LR, "line")], pts)
    c.text((left + right) // 2, height - 8, "step", INK, 2, "cb")
    return c.png()


def _legend(c: Canvas, box, entries, points) -> None:
    """In the corner of the panel that covers fewest data points (top right for a falling loss), framed."""
    x0, y0, x1, y1 = box
    w = max(text_width(t, 2) for t, _, _ in entries) + 52
    h = len(entries) * 22 + 10
    corners = [(x1 - w - 8, y0 + 8), (x1 - w - 8, y1 - h - 8), (x0 + 8, y0 + 8), (x0 + 8, y1 - h - 8)]

    def covered(corner):
        lx, ly = corner
        return sum(1 for x, y in points if lx - 6 <= x <= lx + w + 6 and ly - 6 <= y <= ly + h + 6)

    lx, ly = min(corners, key=covered)  # min keeps the first of equals: top right
    c.rect(lx, ly, lx + w, ly + h, (255, 255, 255))
    for a, b, d, e in ((lx, ly, lx + w, ly), (lx, ly + h, lx + w, ly + h), (lx, ly, lx, ly + h),
                       (lx + w, ly, lx + w, ly + h)):
        c.line(a, b, d, e, (200, 200, 200))
    for k, (label, color, kind) in enumerate(entries):
        cy = ly + 16 + k * 22
        c.line(lx + 8, cy, lx + 36, cy, color, 2)
        if kind == "marker":
            c.rect(lx + 18, cy - 4, lx + 26, cy + 4, color)
        c.text(lx + 44, cy, label, INK, 2, "lm")
