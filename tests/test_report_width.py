"""The text report fits the terminal: wrapped at spaces only (no word cut), commands kept whole, --problems,
and a summary that counts what the report shows."""

from __future__ import annotations

import io
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from envdoctor.engine import Run
from envdoctor.model import Item, Remedy, Result, Status
from envdoctor.report import text
from envdoctor.report.text import wrap, wrap_command

SRC = Path(__file__).resolve().parents[1] / "src"
words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/._-", min_size=1, max_size=30)


@given(st.lists(words, min_size=1, max_size=40), st.integers(20, 120), st.integers(0, 10), st.integers(0, 10))
def test_wrap_cuts_at_spaces_only(ws, width, first, hang):
    lines = wrap(" ".join(ws), width, first, hang)
    assert " ".join(lines).split() == ws  # every word whole, in order
    for n, line in enumerate(lines):
        room = width - (first if n == 0 else hang)
        # A line is over its room only when it is one word (or a number with its unit) too long for any line.
        assert len(line) <= room or len(line.split(" ")) <= 2, (line, room)


def test_wrap_keeps_numbers_with_units_and_drops_spaces_at_breaks():
    lines = wrap("needs 32.0 GiB, 80.0 GiB to be comfortable", 14)
    assert not any(line.endswith(("32.0", "80.0")) for line in lines) and " ".join(lines).count("GiB") == 2
    assert wrap("4 ok  (0.11 s)", 10) == ["4 ok", "(0.11 s)"]
    assert wrap("one two", None) == ["one two"] and wrap("  lead kept", 80) == ["  lead kept"]


LONG = ("axolotl 0.13.1 requires torchao==0.13.0 and transformers==4.57.1 and peft==0.17.1 and accelerate==1.10.1 "
        "but the environment holds torchao 0.18.0, transformers 5.24.0 and peft 0.21.2")
COMMAND = ("/very/long/path/to/a/venv/bin/python -m pip install 'torchao==0.13.0' 'transformers==4.57.1' "
           "'peft==0.17.1' --constraint /tmp/envdoctor-pins.txt")


def failing_run() -> Run:
    def res(cid, cat, status, msg, **kw):
        return Result(status, msg, check_id=cid, title=cid.split(".")[1].title(), category=cat, **kw)
    return Run([
        res("python.version", "Python", Status.OK, "Python 3.11.7"),
        res("packages.requirements", "Packages", Status.FAIL, "requirements: 3 conflicts " + LONG,
            details=["Each conflicting requirement is listed below with the distribution that asks for it " + LONG],
            items=[Item(Status.FAIL, LONG)], remedy=Remedy(COMMAND, "torch stays pinned at 2.8.0+cu128 " + LONG)),
        res("system.swap", "System", Status.WARN, "no swap " + LONG, remedy=Remedy(text="Add swap. " + LONG)),
        res("gpu.driver", "GPU", Status.SKIP, "no NVIDIA GPU found"),
        res("gpu.devices", "GPU", Status.SKIP, "no NVIDIA GPU found"),
        Result(Status.SKIP, "not WSL", check_id="wsl.version", title="WSL", category="WSL", quiet=True),
    ], {}, 0.5)


class Utf8(io.StringIO):
    encoding = "utf-8"


def render(run, **kw) -> str:
    out = Utf8()
    text.render(run, "/v/bin/python (test)", "0.1.0", out, env={}, **kw)
    return out.getvalue()


def test_report_at_80_columns_breaks_no_word():
    wide = render(failing_run(), width=None)
    narrow = render(failing_run(), width=80)
    assert [w for w in narrow.split() if w != "\\"] == wide.split()  # the same words, none cut in two
    for line in narrow.splitlines():
        assert len(line) <= 80, line
    lines = narrow.splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("    fix: /very/long"))
    end = next(n for n in range(start, len(lines)) if not lines[n].endswith(" \\"))
    pasted = "\n".join(lines[start:end + 1])[len("    fix: "):]
    assert _argv(pasted) == _argv(COMMAND)  # cut only where the shell joins the lines again


def test_problems_shows_only_what_is_not_ok():
    out = render(failing_run(), problems=True, width=None)
    assert "Requirements" in out and "Swap" in out
    assert "Version" not in out and "no NVIDIA GPU" not in out and "Python\n" not in out
    healthy = Run([r for r in failing_run().results if r.status in (Status.OK, Status.SKIP)], {}, 0.5)
    assert render(healthy, problems=True) == "1 ok · 0 warnings · 0 failed · 0 errors · 2 skipped · " \
                                             "1 not applicable  (0.50 s)\n"


def test_summary_counts_what_it_shows():
    out = render(failing_run(), width=None)
    assert "[-] Driver, Devices — no NVIDIA GPU found" in out and "not WSL" not in out
    assert "2 skipped · 1 not applicable" in out
    assert "3 skipped" in render(failing_run(), verbose=True, width=None)  # -v shows the quiet one too


def test_width_comes_from_columns_and_never_wraps_a_pipe():
    out = Utf8()
    text.render(failing_run(), "t", "0.1.0", out, env={"COLUMNS": "60"})
    assert max(len(line) for line in out.getvalue().splitlines()) <= 60
    out = Utf8()
    text.render(failing_run(), "t", "0.1.0", out, env={})
    assert any(len(line) > 120 for line in out.getvalue().splitlines())


def _bad_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("base_model: /nowhere/to/be/found/a-model-folder-with-a-rather-long-name\n"
                   "sequence_len: many\nmicro_batch_size: -3\nlearning_rate: fast\n"
                   "datasets:\n  - path: /also/nowhere/a-corpus-with-a-long-file-name-for-wrapping.jsonl\n"
                   "unknown_key_number_one: 1\n", encoding="utf-8")
    return cfg


def test_cli_report_of_a_failing_config_fits_80_columns(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": "80", "NO_COLOR": "1"}
    got = subprocess.run([sys.executable, "-m", "envdoctor", "check", "--only", "config", "python.interpreter",
                          "--config", str(_bad_config(tmp_path))], capture_output=True, text=True, env=env)
    assert got.returncode == 1, got.stderr
    for line in got.stdout.splitlines():
        assert len(line) <= 80 or len(line.split()) == 1, line


def test_under_tmux_at_80_columns_no_word_is_cut(tmp_path):
    """What a person sees: the pane holds exactly the report's lines (none wrapped by the terminal). The
    config lies in a short folder: a path longer than the pane is one word that cannot fit anywhere."""
    if shutil.which("tmux") is None:
        import pytest
        pytest.skip("tmux is not installed")
    import tempfile
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="ed") as short:
        _in_tmux(tmp_path, _bad_config(Path(short)))


def _in_tmux(tmp_path: Path, cfg: Path) -> None:
    done = tmp_path / "done"
    sock = str(tmp_path / "tmux.sock")
    cmd = (f"PYTHONPATH={SRC} NO_COLOR=1 {sys.executable} -m envdoctor check --only config python.interpreter "
           f"--config {cfg}; touch {done}; sleep 60")
    subprocess.run(["tmux", "-S", sock, "new-session", "-d", "-x", "80", "-y", "200", cmd], check=True)
    try:
        for _ in range(600):
            if done.exists():
                break
            time.sleep(0.1)
        pane = subprocess.run(["tmux", "-S", sock, "capture-pane", "-p"], capture_output=True, text=True,
                              check=True).stdout
    finally:
        subprocess.run(["tmux", "-S", sock, "kill-server"], capture_output=True)
    lines = [line.rstrip() for line in pane.splitlines() if line.strip()]
    plain = subprocess.run([sys.executable, "-m", "envdoctor", "check", "--only", "config", "python.interpreter",
                            "--config", str(cfg)], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(SRC), "NO_COLOR": "1", "COLUMNS": "80"}).stdout
    # The terminal cut nothing: each pane line is a line the report itself wrote (durations aside).
    assert lines and "Training config" in pane
    assert [ln.split("(")[0] for ln in lines] == [ln.rstrip().split("(")[0] for ln in plain.splitlines()
                                                  if ln.strip()][:len(lines)]


def _argv(shell_text: str) -> list[str]:
    """What bash makes of pasted lines: the words the command would get."""
    got = subprocess.run(["bash", "-c", f"set -- {shell_text}\nprintf '%s\\0' \"$@\""], capture_output=True,
                         check=True)
    return got.stdout.decode().split("\0")[:-1]


@given(st.lists(st.one_of(words, words.map(lambda w: f"'{w} {w}'"), words.map(lambda w: f'"a {w}"')),
                min_size=1, max_size=25), st.integers(20, 100))
def test_a_wrapped_command_pastes_as_the_same_command(ws, width):
    command = " ".join(ws)
    lines = wrap_command(command, width, 9, 11)
    assert _argv("\n".join(lines)) == _argv(command)
    for n, line in enumerate(lines):
        # Over its room only when it is one shell word, too long for any line.
        assert len(line) <= width - (9 if n == 0 else 11) or len(shlex.split(line.removesuffix(" \\"))) == 1


def test_commands_that_cannot_be_cut_safely_stay_whole():
    assert wrap_command("echo 'unbalanced " + "x " * 60, 40) == ["echo 'unbalanced " + "x " * 60]
    assert wrap_command("pip install a # " + "note " * 20, 40) == ["pip install a # " + "note " * 20]
    assert wrap_command("short", 40) == ["short"]


def test_report_merge_shows_whole_values_wrapped_to_the_width():
    from envdoctor import fleet
    message = "fail: 1 distributions installed twice: peft 0.17.1 in /usr/lib/python3/dist-packages and in the venv"
    nodes = [fleet.Node("node01", "a", {"driver": "580.65.06", "check packages.duplicates": message}),
             fleet.Node("node02", "b", {"driver": "550.54.15"}),
             fleet.Node("gpu-node-03", "c", {"driver": "580.65.06"})]
    out = io.StringIO()
    assert fleet.render(nodes, out, width=80) == 1
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    assert "…" not in out.getvalue()
    # The check's row, read line by line, holds the whole message (and the other nodes' "—").
    row = lines[lines.index(next(ln for ln in lines if ln.startswith("check "))):-1]
    words = " ".join(row).split()[2:]
    assert [w for w in words if w not in ("*", "—")] == message.split()
    piped = io.StringIO()
    fleet.render(nodes, piped, width=None)
    assert message in piped.getvalue()  # no terminal: one line per row, nothing cut
