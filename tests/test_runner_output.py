"""What the runner shows a user: the run log (train.log, library noise kept off the terminal), the progress bar
fitted to the terminal (rendered through a small VT100 model, and for real in a pseudo-terminal), the loss plot
(built-in PNG always, matplotlib where installed) and the closing block with the next commands."""

from __future__ import annotations

import fcntl
import math
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import textwrap
import zlib

import pytest

from envdoctor.assets import asset

TRAIN = str(asset("train"))
sys.path.insert(0, TRAIN)
from envdoctor_runner import pngplot, report, runlog  # noqa: E402
from envdoctor_runner.progress import Progress  # noqa: E402


# -- a terminal, modelled ---------------------------------------------------------------------------------
def render(data: str, cols: int, logical: bool = False) -> list[str]:
    """The screen (scrollback included) after `data`: printable characters with xterm's autowrap (a character
    in the last column wraps only when the next one comes), \r, \n (the pty's onlcr makes it \r\n), ESC[2K.
    logical: a row continued by a wrap is joined to the next one (the line as it was written)."""
    lines, wrapped, row, col, wrap = [[]], set(), 0, 0, False
    i = 0
    while i < len(data):
        ch = data[i]
        m = re.match(r"\x1b\[([0-9;?]*)([A-Za-z])", data[i:]) if ch == "\x1b" else None
        if m:
            if m.group(2) == "K" and m.group(1) == "2":
                lines[row] = []
            i += m.end()
            continue
        if ch == "\r":
            col, wrap = 0, False
        elif ch == "\n":
            row, col, wrap = row + 1, 0, False
            lines += [[]] * (row == len(lines))
        else:
            if wrap:
                wrapped.add(row)
                row, col, wrap = row + 1, 0, False
                lines += [[]] * (row == len(lines))
            line = lines[row] = list(lines[row])
            line += [" "] * (col + 1 - len(line))
            line[col] = ch
            col, wrap = (col, True) if col == cols - 1 else (col + 1, False)
        i += 1
    out = []
    for r, x in enumerate(lines):
        text = "".join(x) if logical and r in wrapped else "".join(x).rstrip()  # a wrapped row's spaces count
        if logical and r - 1 in wrapped:
            out[-1] += text
        else:
            out.append(text)
    return out


class Tty:
    """A terminal stream of a given width."""

    def __init__(self):
        self.data = ""

    def write(self, s):
        self.data += s

    def flush(self):
        pass

    def isatty(self):
        return True


ETA = re.compile(r"eta \d+(:\d\d){1,2}$")


# -- progress ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cols", [200, 100, 80, 72, 60, 45, 30, 20, 14, 12])
def test_the_bar_fits_every_width_and_the_eta_is_never_cut(cols):
    p = Progress(total=100_000, done=0, epochs=3)
    p.started -= 3 * 3600  # three hours in: a long ETA
    text = p.line(12_345, 1, 2.4567, 1_234_567.0, cols)
    eta = p.fields(12_345, 1, 2.4567, 1.0)["eta"]
    assert len(text) <= cols - 1 and (text.endswith(eta) if cols > len(eta) else text == eta[4:]), text
    fields = ["loss 2.4567", "step 12345/100000", "1,234,567 tok/s", "epoch 1/3", "elapsed 3:00:00"]
    kept = [f for f in fields if f in text]
    assert kept == fields[:len(kept)]  # dropped least important first: elapsed, epoch, tok/s, then step
    if cols >= 80:
        assert "loss 2.4567" in text and "step 12345/100000" in text and "█" in text


def test_redraws_at_80_columns_leave_no_line_behind():
    tty = Tty()
    p = Progress(total=2000, stream=tty, epochs=2, columns=80)
    for step in range(1, 1001):
        p.update(step, 1, 10 / step, 123456.7)
    p.message("epoch 1/2: validation loss 0.0123")
    for step in range(1001, 1501):
        p.update(step, 2, 10 / step, 98765.4)
    p.close()
    screen = render(tty.data, 80)
    assert screen[0] == "epoch 1/2: validation loss 0.0123"
    assert re.match(r"█+·+ step 1500/2000 loss 0\.0067 98,765 tok/s eta 0:00$", screen[1])  # epoch: dropped at 80
    assert screen[2:] == [""] and len(screen[1]) <= 79


def test_off_a_terminal_one_full_line_per_step():
    class Log(Tty):
        def isatty(self):
            return False
    log = Log()
    p = Progress(total=4, stream=log, width=8)
    for step in (1, 2):
        p.update(step, 1, 3.0, 10.0)
    p.message("epoch 1: validation loss 2.9")
    p.close()
    lines = log.data.splitlines()
    assert len(lines) == 3 and "\r" not in log.data and "\x1b" not in log.data
    assert lines[1].startswith("████···· step 2/4 epoch 1 loss 3.0000 10 tok/s elapsed 0:00 eta")
    assert lines[2] == "epoch 1: validation loss 2.9"


# -- the run log, in real child processes ---------------------------------------------------------------
CHILD = textwrap.dedent("""
    import logging, sys, time, warnings
    sys.path.insert(0, {train!r})
    from transformers.utils import logging as hf_logging     # a library configured before the log starts
    hf_logger = hf_logging.get_logger("transformers.modeling_layers")
    from envdoctor_runner import runlog
    from envdoctor_runner.progress import Progress
    log = runlog.start({out!r})
    print("data: 8 documents")
    logging.getLogger("bitsandbytes.backends.cpu.ops").warning(
        "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'")
    warnings.warn("`gradient_checkpointing_disable` is deprecated", FutureWarning)
    warnings.warn("this one is for the user", UserWarning)
    p = Progress(6, 0, epochs=1)
    for step in range(1, 7):
        p.update(step, 1, 6.0 - step / 2, 1000.0 * step)
        if step == 3:
            hf_logger.warning_once("Caching is incompatible with gradient checkpointing in LlamaDecoderLayer.")
            sys.stderr.write("Writing shards:   0%|  | 0/1\\rWriting shards: 100%|##| 1/1\\n")
    p.message("epoch 1: validation loss 3.25")
    p.close()
    {tail}
""")


def child(tmp_path, tail="log.done(sys.argv[1] + '/adapter', sys.argv[1] + '/loss_curve.png', sys.executable)",
          env=None):
    pytest.importorskip("transformers")
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(train=TRAIN, out=str(tmp_path / "run"), tail=tail))
    return script, {**os.environ, **(env or {})}


def run_in_pty(argv, env, cols: int) -> str:
    """Run argv on a real pseudo-terminal `cols` wide; everything it wrote."""
    main, sub = pty.openpty()
    fcntl.ioctl(sub, termios.TIOCSWINSZ, struct.pack("HHHH", 24, cols, 0, 0))
    proc = subprocess.Popen(argv, stdin=sub, stdout=sub, stderr=sub, env=env, close_fds=True)
    os.close(sub)
    out = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    assert proc.wait(timeout=120) == 0, out.decode(errors="replace")
    return out.decode("utf-8", errors="replace").replace("\r\n", "\n")


@pytest.mark.parametrize("cols", [80, 50])
def test_on_a_terminal_noise_stays_in_the_log_and_the_bar_redraws_in_place(tmp_path, cols):
    script, env = child(tmp_path)
    data = run_in_pty([sys.executable, str(script), str(tmp_path / "run")], env, cols)
    screen, lines = render(data, cols), render(data, cols, logical=True)
    assert all(len(row) <= cols for row in screen)
    shown = "\n".join(lines)  # wrapped rows joined back: a check on a phrase is not fooled by a wrap
    for noise in ("gemm_4bit_forward", "deprecated", "incompatible with gradient checkpointing"):
        assert noise not in shown
    assert "UserWarning: this one is for the user" in shown and lines[0] == "data: 8 documents"
    bars = [line for line in lines if " step " in line or line.startswith("loss ")]
    assert len(bars) == 0  # the last bar was replaced by the epoch line; no redraw was left on screen
    i = lines.index("epoch 1: validation loss 3.25")
    assert lines[i - 1] == "Writing shards: 100%|##| 1/1"  # a library's own bar is left as it ended
    assert lines[i + 2].startswith("done. LoRA adapter: ") and "(3 library warnings shown only there)" in shown
    log = (tmp_path / "run" / "train.log").read_text()
    assert "\x1b" not in log and "\r" not in log
    for noise in ("gemm_4bit_forward", "FutureWarning: `gradient_checkpointing_disable`",
                  "Caching is incompatible with gradient checkpointing", "Writing shards: 100%"):
        assert noise in log
    steps = [line for line in log.splitlines() if " step " in line]
    assert [re.search(r"step (\d)/6", line).group(1) for line in steps] == list("123456")  # one per redraw


def test_in_a_pipe_noise_is_dropped_and_redrawn_lines_show_their_end(tmp_path):
    script, env = child(tmp_path)
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    term = res.stdout + res.stderr
    assert "gemm_4bit" not in term and "deprecated" not in term and "incompatible" not in term
    assert "\r" not in term and "\x1b" not in term
    assert "Writing shards: 100%|##| 1/1\n" in res.stderr and "  0%" not in res.stderr
    assert len([line for line in res.stdout.splitlines() if " step " in line]) == 6
    assert res.stdout.splitlines()[-2:] == [f"  envdoctor merge {tmp_path / 'run'} --python {sys.executable}",
                                            f"  envdoctor eval {tmp_path / 'run'} --python {sys.executable}"]


def test_a_resumed_run_appends_to_the_log_and_a_crash_is_logged_too(tmp_path):
    script, env = child(tmp_path, tail="raise RuntimeError('out of memory, say')")
    for _ in range(2):
        res = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 1 and "RuntimeError: out of memory, say" in res.stderr
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("=== ") == 2 and log.count("RuntimeError: out of memory, say") == 2


def test_other_ranks_print_nothing_but_a_crash_and_log_to_their_own_file(tmp_path):
    script, env = child(tmp_path, tail="print('rank one says'); raise SystemExit(0)", env={"RANK": "1"})
    res = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout == "" and res.stderr == ""
    run = tmp_path / "run"
    assert not (run / "train.log").exists() and "rank one says" in (run / "train.rank1.log").read_text()
    script, env = child(tmp_path, tail="raise ValueError('bad shard')", env={"RANK": "1"})
    res = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and res.stdout == ""
    assert "[rank 1] ValueError: bad shard" in res.stderr.splitlines()


def test_the_done_block_names_the_files_and_commands_the_cli_accepts(tmp_path):
    from envdoctor.cli import build_parser
    lines = runlog.done_lines(tmp_path, tmp_path / "adapter", tmp_path / "loss_curve.png", "/venv/bin/python", 2)
    text = "\n".join(lines)
    for want in (f"adapter: {tmp_path / 'adapter'}", str(tmp_path / "loss_curve.png"), str(tmp_path / "train.log"),
                 "2 library warnings"):
        assert want in text
    commands = [line.split() for line in lines if line.startswith("  envdoctor ")]
    assert [c[1] for c in commands] == ["merge", "eval"]
    for c in commands:
        args = build_parser().parse_args(c[1:])
        assert args.run == str(tmp_path) and args.python == "/venv/bin/python"
    assert "--python" not in "\n".join(runlog.done_lines(tmp_path, tmp_path / "adapter", None))


# -- the loss plot ------------------------------------------------------------------------------------------
def decode_png(data: bytes) -> tuple[int, int, list[list[tuple[int, int, int]]]]:
    """8-bit RGB/RGBA PNG → (width, height, rows of RGB), all five row filters."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]
        if kind == b"IHDR":
            w, h, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6)
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw, stride, prev, rows = zlib.decompress(idat), w * bpp, bytearray(w * bpp), []
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a, b = line[i - bpp] if i >= bpp else 0, prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[x * bpp:x * bpp + 3]) for x in range(w)])
        prev = line
    return w, h, rows


def near(px, color, tol=40) -> bool:
    return sum(abs(a - b) for a, b in zip(px, color)) <= tol


def count(rows, color, x0, y0, x1, y1, tol=40) -> int:
    return sum(near(rows[y][x], color, tol) for y in range(y0, y1) for x in range(x0, x1))


def curves(n=48, seed=0.0):
    losses = [6.3 * math.exp(-i / 16) + 2.4 + 0.1 * math.sin(i * 1.7 + seed) for i in range(n)]
    val = [(8 * e, losses[8 * e - 1] + 0.3) for e in range(1, n // 8 + 1)]
    lrs = [0.003 * min(1, (s + 1) / 2) * 0.5 * (1 + math.cos(math.pi * s / n)) for s in range(n)]
    return losses, val, lrs


def check_figure(png: bytes, train_color, val_color, lr_color):
    w, h, rows = decode_png(png)
    assert (w, h) == (800, 480)
    dark = (40, 40, 40)
    # Axes: a long dark horizontal run (an x axis) in the lower half, a long dark vertical one (a y axis) on the left.
    assert any(sum(near(px, dark, 150) for px in rows[y]) > 500 for y in range(h // 2, h))
    assert any(sum(near(rows[y][x], dark, 150) for y in range(h)) > 250 for x in range(w // 4))
    # Tick numbers left of the y axis and under the x axis, the "step" label at the bottom centre.
    assert count(rows, dark, 0, 30, 90, h - 60, 150) > 100
    assert count(rows, dark, 100, h - 50, w - 20, h - 28, 150) > 60
    assert count(rows, dark, w // 2 - 60, h - 30, w // 2 + 60, h, 150) > 20
    # The loss panel (top 60%): train and validation colours; the legend's text near its top right.
    assert count(rows, train_color, 0, 0, w, int(h * 0.6)) > 200
    assert count(rows, val_color, 0, 0, w, int(h * 0.6)) > 100
    assert count(rows, dark, w // 2, 30, w, 140, 150) > 150
    # The learning rate below it, not above.
    assert count(rows, lr_color, 0, int(h * 0.62), w, h) > 200 and count(rows, lr_color, 0, 0, w, int(h * 0.5)) == 0
    return rows


def test_the_builtin_plot_has_axes_ticks_legend_and_the_learning_rate(tmp_path):
    losses, val, lrs = curves()
    path = report.loss_curve_png(tmp_path, losses, val, lrs, builtin=True)
    rows = check_figure(path.read_bytes(), pngplot.TRAIN, pngplot.VAL, pngplot.LR)
    # Validation markers sit where their (step, loss) map: find the orange square for the last epoch.
    other = report.loss_curve_png(tmp_path, *curves(seed=1.0), builtin=True).read_bytes()
    assert decode_png(other)[2] != rows  # different data, a different picture
    assert path.name == "loss_curve.png"


def test_without_matplotlib_the_builtin_plot_is_what_a_run_gets(tmp_path):
    try:
        import matplotlib  # noqa: F401
        pytest.skip("matplotlib is installed here: the default is its plot")
    except ImportError:
        pass
    losses, val, lrs = curves()
    default = report.loss_curve_png(tmp_path, losses, val, lrs).read_bytes()
    assert default == report.loss_curve_png(tmp_path, losses, val, lrs, builtin=True).read_bytes()


def test_the_matplotlib_plot_has_the_same_elements(tmp_path):
    pytest.importorskip("matplotlib")
    losses, val, lrs = curves()
    path = report.loss_curve_png(tmp_path, losses, val, lrs)
    rows = check_figure(path.read_bytes(), (31, 119, 180), (230, 110, 10), (44, 150, 44))
    assert decode_png(report.loss_curve_png(tmp_path, *curves(seed=1.0)).read_bytes())[2] != rows


@pytest.mark.parametrize("losses,val,lrs", [([5.0], [], None), ([], [], None),
                                            ([6, 5, float("nan"), 4], [(2, float("nan")), (4, 4.2)], [1e-4] * 4),
                                            ([2.0] * 10, [(10, 2.0)], [0.0] * 10)])
def test_odd_runs_still_give_a_picture(tmp_path, losses, val, lrs):
    w, h, _ = decode_png(report.loss_curve_png(tmp_path, losses, val, lrs, builtin=True).read_bytes())
    assert (w, h) == (800, 480)


def test_the_font_draws_every_character_the_plot_writes_each_one_distinct():
    used = set("0123456789.,-+:()/=>% abcdefghijklmnopqrstuvwxyz")
    assert used <= set(pngplot.FONT)
    shapes = {}
    for ch, rows in pngplot.FONT.items():
        assert len(rows) in ((0, 7, 8) if ch == " " else (7, 8)) and all(len(r) == 5 for r in rows), ch
        if ch != " ":
            assert tuple(rows) not in shapes, (ch, shapes.get(tuple(rows)))
            shapes[tuple(rows)] = ch


def test_ticks_are_round_cover_the_range_and_label_distinctly():
    for lo, hi in [(2.4, 8.9), (0, 48), (0, 0.0033), (1e-5, 3e-5), (0, 100_000), (4.5, 5.5)]:
        ticks = pngplot.nice_ticks(lo, hi)
        step = ticks[1] - ticks[0]
        assert ticks[0] <= lo + step and ticks[-1] >= hi - step and 3 <= len(ticks) <= 8
        labels = [pngplot.tick_label(t, step) for t in ticks]
        assert len(set(labels)) == len(labels), labels
    assert [pngplot.tick_label(t, 0.001) for t in (0, 0.001, 0.002)] == ["0", "0.001", "0.002"]
    assert pngplot.tick_label(2e-5, 1e-5) == "2e-5" and pngplot.tick_label(2.5, 0.5) == "2.5"
    assert pngplot.nice_ticks(0, 3, 6, integer=True) == [0, 1, 2, 3]
