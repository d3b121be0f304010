"""Run hygiene, for real on the CPU: Ctrl-C stops a run cleanly (exit 130, no traceback, the --resume
command printed), SIGTERM too (143), with one process or two through torchrun (no rank left behind); the
resumed run logs each step once; a finished output folder is not overwritten
without --force (and --force moves it aside); merge and eval default to the interpreter that trained."""

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml

from envdoctor import cli
from envdoctor.assets import asset

pytestmark = pytest.mark.slow
pytest.importorskip("transformers")
pytest.importorskip("peft")
ENV = {**os.environ, "NO_COLOR": "1"}
ENV.pop("VIRTUAL_ENV", None)


def envdoctor(*args, cwd):
    return subprocess.run([sys.executable, "-m", "envdoctor", *args], capture_output=True, text=True, cwd=cwd,
                          env=ENV, timeout=900)


def steps_logged(metrics):
    rows = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    return [r["step"] for r in rows if "loss" in r]


def test_ctrl_c_resume_and_a_finished_folder(tmp_path):
    cfg = yaml.safe_load(asset("train", "configs", "demo.yaml").read_text())
    cfg.update(num_epochs=2, save_steps=3, datasets=[{"path": str(asset("train", "demo_corpus"))}],
               output_dir=str(tmp_path / "run"))
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(cfg))
    # Ctrl-C on a terminal reaches the whole foreground process group: envdoctor and the runner.
    proc = subprocess.Popen([sys.executable, "-m", "envdoctor", "train", "--python", sys.executable, str(config)],
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    metrics, deadline = tmp_path / "run" / "metrics.jsonl", time.time() + 600
    while proc.poll() is None and time.time() < deadline and max(steps_logged(metrics), default=0) < 5:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted:\n" + proc.communicate()[0][-3000:]
    os.killpg(proc.pid, signal.SIGINT)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert f"continue with: envdoctor train {config} --resume" in output
    assert "the last checkpoint is step-3" in output or "the last checkpoint is step-6" in output, output[-2000:]
    interrupted_at = max(steps_logged(metrics))

    res = envdoctor("train", "--python", sys.executable, str(config), "--resume", cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    steps = steps_logged(metrics)
    assert steps == list(range(1, max(steps) + 1)) and max(steps) > interrupted_at  # each step once
    summary = json.loads((tmp_path / "run" / "run_summary.json").read_text())
    assert summary["python"] == sys.executable
    lrs = [json.loads(x)["lr"] for x in metrics.read_text().splitlines() if '"loss"' in x]
    assert lrs[0] == pytest.approx(cfg["learning_rate"] / 3)  # step 1 trained at warm-up 1/(2+1), logged as such

    again = envdoctor("train", "--python", sys.executable, str(config), cwd=tmp_path)
    assert again.returncode == 2 and "already holds a finished run" in again.stdout and "--resume" in again.stdout
    assert (tmp_path / "run" / "run_summary.json").exists()
    dry = envdoctor("train", "--python", sys.executable, str(config), "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stdout[-2000:]
    forced = envdoctor("train", "--python", sys.executable, str(config), "--force", "--dry-run", cwd=tmp_path)
    assert forced.returncode == 0 and (tmp_path / "run" / "run_summary.json").exists()  # a dry run moves nothing
    forced = envdoctor("train", "--python", sys.executable, str(config), "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stdout[-3000:]
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.")]
    assert len(aside) == 1 and (aside[0] / "run_summary.json").exists() and f"now in {aside[0]}" in forced.stdout


def start_two_ranks(tmp_path, **overrides):
    """`envdoctor train` of the demo with --nproc 2 (torchrun, gloo) in its own session, output in tmp/run."""
    cfg = yaml.safe_load(asset("train", "configs", "demo.yaml").read_text())
    cfg.update(datasets=[{"path": str(asset("train", "demo_corpus"))}], output_dir=str(tmp_path / "run"), **overrides)
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(cfg))
    return config, subprocess.Popen(
        [sys.executable, "-m", "envdoctor", "train", "--python", sys.executable, str(config), "--nproc", "2"],
        cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def descendants(pid):
    """The processes under `pid` (none once it is gone or a zombie)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return []


def running_commands(pid) -> list[str]:
    """The command lines of the processes under `pid` that still run: one that ends or turns zombie between the
    listing and the reading (a race CI once lost: psutil.ZombieProcess) is skipped, not a failure."""
    commands = []
    for p in descendants(pid):
        try:
            commands.append(" ".join(p.cmdline()))
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            pass
    return commands


def stop_when(proc, ready, stop, timeout=600):
    """Wait until ready() holds (or the run ended, or `timeout` s passed), then stop(); the output once the run
    has ended. A session that outlives the test is SIGKILLed whatever happened."""
    try:
        deadline = time.time() + timeout
        while proc.poll() is None and time.time() < deadline and not ready():
            time.sleep(0.01)
        stop()
        return proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def sigterm_once_waiting(script, before=lambda: None) -> tuple[int, str]:
    """Run `script` (with its folder as working directory) until it prints "waiting", call before(), send it
    SIGTERM: (its exit code, the rest of its output). A process that outlives this is killed."""
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=script.parent)
    try:
        assert proc.stdout.readline().strip() == "waiting"
        before()
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, output


def left_running(procs):
    """Of these processes, the ones still running (a zombie is dead: only its entry is left)."""
    alive = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.parametrize("sig,whom,code,says", [
    (signal.SIGINT, "group", 130, "interrupted"),  # Ctrl-C on a terminal: envdoctor, torchrun and every rank
    (signal.SIGTERM, "envdoctor", 143, "stopped by SIGTERM"),  # `docker stop`, systemd, kill PID: envdoctor alone
])
def test_two_process_run_stops_like_one_process(tmp_path, sig, whom, code, says):
    """--nproc 2 (torchrun, gloo): a stop ends as one process's does (no torchrun SignalException traceback,
    from any process), leaves no rank behind, and leaves a checkpoint that --resume continues."""
    config, proc = start_two_ranks(tmp_path, num_epochs=2, save_steps=3)
    try:
        metrics, deadline = tmp_path / "run" / "metrics.jsonl", time.time() + 600
        while proc.poll() is None and time.time() < deadline and max(steps_logged(metrics), default=0) < 4:
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be interrupted:\n" + proc.communicate()[0][-3000:]
        started = descendants(proc.pid)
        assert len([p for p in started if p.ppid() != proc.pid]) == 2  # torchrun's two ranks
        os.killpg(proc.pid, sig) if whom == "group" else os.kill(proc.pid, sig)
        output = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == code, output[-3000:]
    assert "Traceback" not in output and "SignalException" not in output, output[-3000:]
    assert "death signal" not in output and "closing signal" not in output, output[-3000:]  # torchrun restating it
    assert output.count(f"{says}: the last checkpoint is ") == 1, output[-2000:]
    resume = output.split("continue with: ")[1].splitlines()[0]
    assert resume == f"envdoctor train {config} --resume --nproc 2 --python {sys.executable}", resume
    assert "envdoctor: interrupted" not in output  # the runner said it: one line
    assert not left_running(started), [p.cmdline() for p in left_running(started)]
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    assert (tmp_path / "run" / "checkpoints" / latest / "state.json").exists()
    interrupted_at = max(steps_logged(metrics))

    res = envdoctor(*shlex.split(resume)[1:], cwd=tmp_path)  # the printed command, as printed
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    steps = steps_logged(metrics)
    assert steps == list(range(1, max(steps) + 1)) and max(steps) > interrupted_at  # each step once


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_stopped_two_node_run_prints_each_node_its_own_resume_command(tmp_path):
    """--nnodes 2 (two `envdoctor train` on this machine, one rank each), Ctrl-C on both: each node prints
    the command that continues it, with the node flags and its own --node-rank (without them, pasted on a
    node, it started a one-node run), and says that every node runs its own; the commands, as printed and
    run at once, continue the run."""
    cfg = yaml.safe_load(asset("train", "configs", "demo.yaml").read_text())
    cfg.update(num_epochs=2, save_steps=3, load_in_4bit=False, adapter="lora", micro_batch_size=1,
               gradient_accumulation_steps=4, datasets=[{"path": str(asset("train", "demo_corpus"))}],
               output_dir=str(tmp_path / "run"))
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(cfg))
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen([sys.executable, "-m", "envdoctor", "train", "--python", sys.executable, str(config),
                               "--nnodes", "2", "--node-rank", str(r), "--rdzv-endpoint", endpoint], cwd=tmp_path,
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True) for r in (0, 1)]
    try:
        metrics, deadline = tmp_path / "run" / "metrics.jsonl", time.time() + 600
        while all(p.poll() is None for p in nodes) and time.time() < deadline and max(steps_logged(metrics), default=0) < 4:
            time.sleep(0.02)
        assert all(p.poll() is None for p in nodes), "the run ended before it could be interrupted"
        for p in nodes:
            os.killpg(p.pid, signal.SIGINT)
        outputs = [p.communicate(timeout=300)[0] for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.communicate()
    resumes = []
    for r, (p, output) in enumerate(zip(nodes, outputs)):
        assert p.returncode == 130 and "Traceback" not in output, output[-3000:]
        assert output.count("continue with: ") == 1, output[-3000:]
        resume = output.split("continue with: ")[1].splitlines()[0]
        assert resume == (f"envdoctor train {config} --resume --nnodes 2 --node-rank {r} --rdzv-endpoint {endpoint} "
                          f"--python {sys.executable}"), resume
        assert output.count("every node runs its own") == 1, output[-3000:]
        resumes.append(resume)
    interrupted_at = max(steps_logged(metrics))
    again = [subprocess.Popen([sys.executable, "-m", "envdoctor", *shlex.split(resume)[1:]], cwd=tmp_path, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for resume in resumes]
    for p in again:
        output = p.communicate(timeout=600)[0]
        assert p.returncode == 0, output[-3000:]
    steps = steps_logged(metrics)
    assert steps == list(range(1, max(steps) + 1)) and max(steps) > interrupted_at  # each step once


def test_a_stop_before_any_rank_started_says_so_in_one_line(tmp_path):
    """Ctrl-C while torchrun (train/launch.py) is still importing torch, before any rank exists: exit 130 and
    one line saying what stopped it, that nothing was trained and that the same command runs it again (it
    used to end with no line at all)."""
    _, proc = start_two_ranks(tmp_path)
    # launch.py starts with the stops held (envdoctor blocks them before it starts it): from its start on the
    # signal reaches launch.py's own handler, long before torch is imported and a rank started.
    output = stop_when(proc, lambda: any("launch.py" in c for c in running_commands(proc.pid)),
                       lambda: os.killpg(proc.pid, signal.SIGINT), timeout=300)
    assert proc.returncode == 130, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    said = [line for line in output.splitlines() if line.startswith("interrupted")]
    assert said == ["interrupted before any rank started: nothing was trained; the same command runs it again"], \
        output[-3000:]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_stop_while_the_ranks_start_is_clean_too(tmp_path):
    """Ctrl-C as soon as both ranks exist (starting, importing torch, or meeting at the rendezvous): a
    KeyboardInterrupt there can be dropped by Python ("Exception ignored in …") or leave a half-imported
    numpy behind ("cannot load module more than once"); either way the stop is one line, no traceback."""
    _, proc = start_two_ranks(tmp_path)
    started = []

    def stop():
        started.extend(descendants(proc.pid))
        os.killpg(proc.pid, signal.SIGINT)
    output = stop_when(proc, lambda: len(descendants(proc.pid)) >= 3, stop, timeout=300)
    assert proc.returncode == 130, output[-3000:]
    assert "Traceback" not in output and "Exception ignored" not in output, output[-3000:]
    # One line, or none when the signal came before the ranks' Python ran a line of the runner (the default
    # action of SIGINT, during the interpreter's start, ends a process silently).
    assert len([line for line in output.splitlines() if line.startswith("interrupted")]) <= 1, output[-3000:]
    assert not left_running(started), [p.cmdline() for p in left_running(started)]


def test_ranks_die_with_a_killed_torchrun(tmp_path):
    """torchrun SIGKILLed (envdoctor's answer to a second Ctrl-C, or the OOM killer) cannot stop its ranks:
    they go with it (PR_SET_PDEATHSIG) instead of training on alone (measured without it: they finished the
    run and wrote run_summary.json)."""
    _, proc = start_two_ranks(tmp_path, num_epochs=2)
    try:
        metrics, deadline = tmp_path / "run" / "metrics.jsonl", time.time() + 600
        while proc.poll() is None and time.time() < deadline and not steps_logged(metrics):
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.communicate()[0][-3000:]
        started = descendants(proc.pid)
        agent = [p for p in started if p.ppid() == proc.pid]
        ranks = [p for p in started if p.ppid() != proc.pid]
        assert len(agent) == 1 and len(ranks) == 2
        agent[0].kill()
        output = proc.communicate(timeout=300)[0]  # the ranks hold its stdout: it ends when they have
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGKILL, output[-3000:]
    assert not left_running(ranks) and not (tmp_path / "run" / "run_summary.json").exists(), output[-3000:]


STUCK = """
import datetime, sys
sys.path.insert(0, {train!r})
from envdoctor_runner import stopping
stopping.install()
stopping.STUCK_S = 1.0
stopping.last_words = lambda signum: (print(f"last words {{signum}}", flush=True), 128 + signum)[1]
import torch.distributed as dist
store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=datetime.timedelta(seconds=600))
# said from a thread once the main thread is inside store.get: said before the call, the signal could land
# while the main thread is still in Python (a KeyboardInterrupt traceback, -2: 1 run in 4 failed so)
import threading
threading.Timer(1.0, lambda: print("waiting", flush=True)).start()
store.get("never set")  # C++ that returns to Python only after 600 s, as a rendezvous with a rank that left
"""


def test_a_stop_reaches_a_main_thread_blocked_in_cpp(tmp_path):
    """The handler of a signal runs only when the main thread is back in Python: one blocked in a c10d store
    wait (a rank waiting for a peer that already stopped) would sit there until torchrun's SIGKILL. The
    runner's stop thread sees the signal anyway and ends the process after STUCK_S with the runner's words."""
    script = tmp_path / "stuck.py"
    script.write_text(STUCK.format(train=str(asset("train"))))
    code, output = sigterm_once_waiting(script)
    assert code == 143 and output.strip() == "last words 15", output


OTHER_SIGNAL = """
import os, signal, sys, time
sys.path.insert(0, {train!r})
from envdoctor_runner import stopping
stopping.install()
stopping.STUCK_S = 0.2
stopping.last_words = lambda signum: (print(f"last words {{signum}}", flush=True), 128 + signum)[1]
signal.signal(signal.SIGUSR1, lambda *_: None)  # a library's own handler (transformers' SIGALRM timeout...)
os.kill(os.getpid(), signal.SIGUSR1)
deadline = time.monotonic() + 3.0
while time.monotonic() < deadline:  # a healthy run, in Python: nothing should end it
    time.sleep(0.05)
print("trained on", flush=True)
"""


def test_a_signal_that_is_not_a_stop_does_not_end_the_run(tmp_path):
    """The stop thread wakes on the wakeup fd, which gets a byte for every signal with a Python handler:
    only SIGINT/SIGTERM (the runner's own handler) may start its count down to os._exit."""
    script = tmp_path / "other.py"
    script.write_text(OTHER_SIGNAL.format(train=str(asset("train"))))
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "trained on", res.stdout + res.stderr


FINISHED_THEN_STOPPED = """
import os, signal, sys, time
sys.path.insert(0, {train!r})
from envdoctor_runner import stopping
stopping.install()
stopping.STUCK_S = 0.2
stopping.last_words = lambda signum: (print(f"last words {{signum}}", flush=True), 128 + signum)[1]
code = stopping.run(lambda: 0)  # the run finished: adapter and results written
os.kill(os.getpid(), signal.{sig})  # Ctrl-C / SIGTERM while the process tears down (torch's takes a while)
time.sleep(1.0)
print("exit", code, flush=True)
raise SystemExit(code)
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_stop_after_the_run_finished_changes_nothing(tmp_path, sig):
    """Once main() has returned, the run is complete: a signal during the exit must not turn it into a
    KeyboardInterrupt traceback and exit 130/143, nor the stop thread's "continue with" words."""
    script = tmp_path / "finished.py"
    script.write_text(FINISHED_THEN_STOPPED.format(train=str(asset("train")), sig=sig))
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "exit 0" and not res.stderr, res.stdout + res.stderr


def test_merge_and_eval_default_to_the_interpreter_that_trained(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    trained_with = tmp_path / "venv" / "bin" / "python"
    trained_with.parent.mkdir(parents=True)
    trained_with.write_text("")
    (run / "run_summary.json").write_text(json.dumps({"python": str(trained_with)}))
    args = argparse.Namespace(run=str(run), python=None, backend="runner")
    cli.run_python(args)
    assert args.python == str(trained_with)
    args = argparse.Namespace(run=str(run), python="/usr/bin/python3", backend="runner")
    cli.run_python(args)
    assert args.python == "/usr/bin/python3"  # --python wins
    trained_with.unlink()
    args = argparse.Namespace(run=str(run), python=None, backend="runner")
    cli.run_python(args)
    assert args.python is None  # gone: the usual choice (active venv, …)


def test_without_a_validation_split_the_run_merges_and_logs_no_nan(tmp_path):
    """val_set_size 0 (axolotl's default): no validation pass, no NaN in metrics.jsonl, and the merge is
    verified on training chunks (heldout.json says so)."""
    cfg = yaml.safe_load(asset("train", "configs", "demo.yaml").read_text())
    cfg.pop("val_set_size")
    cfg.update(num_epochs=1, datasets=[{"path": str(asset("train", "demo_corpus"))}], output_dir=str(tmp_path / "run"))
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(cfg))
    res = envdoctor("train", "--python", sys.executable, str(config), cwd=tmp_path)
    assert res.returncode == 0 and "validation loss" not in res.stdout, res.stdout[-3000:]
    assert "NaN" not in (tmp_path / "run" / "metrics.jsonl").read_text()
    assert json.loads((tmp_path / "run" / "heldout.json").read_text())["source"] == "training"
    merged = envdoctor("merge", str(tmp_path / "run"), cwd=tmp_path)
    assert merged.returncode == 0 and (tmp_path / "run" / "merged" / "envdoctor-merge.json").exists(), \
        merged.stdout[-3000:] + merged.stderr[-2000:]


STUCK_BUILDING = """
import datetime, importlib.util, sys, threading
from pathlib import Path
sys.path.insert(0, {train!r})
from envdoctor_runner import stopping
stopping.install()
stopping.STUCK_S = 1.0
spec = importlib.util.spec_from_file_location("qlora", {qlora!r})
qlora = importlib.util.module_from_spec(spec)
spec.loader.exec_module(qlora)
stopping.last_words = lambda signum: qlora.interrupted(sys.argv, signum)  # as the runner sets it
import torch
import torch.distributed as dist
from envdoctor_runner.modeling import _BaseWriter
writer = _BaseWriter(Path({base!r}), 2)  # the streamed build's float base, one piece written
writer.add({{"model.embed_tokens.weight": torch.zeros(8, 4)}})
store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=datetime.timedelta(seconds=600))
threading.Timer(1.0, lambda: print("waiting", flush=True)).start()
store.get("never set")  # the next piece's FSDP collective, with a rank that already left
"""


def test_a_stop_while_the_float_base_is_built_leaves_no_staging_folder(tmp_path):
    """Stopped while build_4bit_streamed writes the float base piece by piece, the main thread held in C++
    (a collective): the stop thread ends the process with os._exit, where nothing unwinds; the base's
    staging folder must not stay in the output folder (until the next run)."""
    out = tmp_path / "run"
    out.mkdir()
    script = tmp_path / "building.py"
    script.write_text(STUCK_BUILDING.format(train=str(asset("train")), qlora=str(asset("train", "qlora.py")),
                                            base=str(out / "base")))
    seen = []
    code, output = sigterm_once_waiting(script, lambda: seen.append((out / ".base.tmp").is_dir()))
    assert seen == [True]  # the piece was being written when the stop came
    assert code == 143 and "stopped by SIGTERM" in output and "Traceback" not in output, output
    assert list(out.iterdir()) == []
