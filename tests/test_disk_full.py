"""A full disk while the runner saves: one line, exit 4, no traceback, nothing half-written left under a
real name, the previous checkpoint intact, and --resume (the command the line gives) continues once space
is back. On a genuinely full filesystem: a tmpfs of a few MB, mounted in a user + mount namespace
(`unshare -Urm`, no root needed), which returns ENOSPC from the kernel exactly as a full disk does; then
remounted larger ("space returns") in the same namespace. A tmpfs mount lives only as long as its
namespace, so each scenario runs as one shell script in it and copies what it left to tmp_path."""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from envdoctor.assets import asset

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
sys.path.insert(0, str(asset("train")))
from envdoctor_runner import atomic  # noqa: E402


def _namespaces() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode == 0


needs_ns = pytest.mark.skipif(not _namespaces(), reason="no unprivileged user + mount namespaces (unshare -Urm)")
ENV = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
ENVDOCTOR = f"PYTHONPATH={shlex.quote(str(Path(__file__).parents[1] / 'src'))} NO_COLOR=1 {shlex.quote(sys.executable)} -m envdoctor"


def demo(tmp_path: Path, **keys) -> Path:
    cfg = yaml.safe_load(asset("train", "configs", "demo.yaml").read_text())
    cfg.update(datasets=[{"path": str(asset("train", "demo_corpus"))}], output_dir=str(tmp_path / "out"), **keys)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def in_namespace(tmp_path: Path, script: str) -> None:
    """`script` with $OUT a tmpfs (mount it yourself: its size is the scenario) and $T = tmp_path."""
    (tmp_path / "out").mkdir(exist_ok=True)
    res = subprocess.run(["unshare", "-Urm", "sh", "-c", "set -u\n" + script], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env=ENV | {"OUT": str(tmp_path / "out"), "T": str(tmp_path)})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def step(tmp_path: Path, name: str) -> tuple[int, str]:
    return int((tmp_path / f"{name}.rc").read_text()), (tmp_path / f"{name}.log").read_text()


def one_error_line(text: str) -> str:
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text[-3000:]
    return errors[0]


def run(name: str, cmd: str) -> str:
    """A shell line: `cmd` with its output and exit code kept as $T/name.log, $T/name.rc."""
    return f"{cmd} > $T/{name}.log 2>&1; echo $? > $T/{name}.rc\n"


@needs_ns
def test_full_disk_at_a_checkpoint_keeps_the_last_one_and_the_printed_resume_command_continues(tmp_path):
    config = demo(tmp_path, num_epochs=2)
    # 5.8 MB: the float base (2.0 MB) and epoch-1 (2.5 MB: fp32 adapter + AdamW state) fit, epoch-2 does not.
    # --force: past the preflight's own refusal (a disk that fills up after the start is the case here).
    in_namespace(tmp_path, "mount -t tmpfs -o size=5800k tmpfs $OUT\n"
                 + run("first", f"{ENVDOCTOR} train --python {sys.executable} {config} --force")
                 + "cp -a $OUT $T/after-first\n"
                 + "mount -o remount,size=64m $OUT\n"
                 # the command the error line gives, with this checkout's envdoctor
                 + f'eval "{ENVDOCTOR} $(sed -n "s/.*then continue with: envdoctor //p" $T/first.log) --python '
                 + sys.executable + '"'
                 + f" > $T/resumed.log 2>&1; echo $? > $T/resumed.rc\n"
                 + "cp -a $OUT $T/after-resume\n")
    code, text = step(tmp_path, "first")
    line = one_error_line(text)
    assert code == 4, text[-3000:]
    assert line.startswith(f"error: cannot write checkpoint epoch-2 in {tmp_path / 'out' / 'checkpoints'}: "
                           "no space left on device (needs 2.5 MB, "), line
    assert "The last good checkpoint is epoch-1: free space there, then continue with: envdoctor train " in line, line
    assert "--resume" in line.split("then continue with: ")[1].split(), line  # envdoctor's own command, as launched
    first = tmp_path / "after-first"
    ckpts = first / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch-1", "latest"]  # no staging folder left
    assert (ckpts / "latest").read_text() == "epoch-1"
    assert json.loads((ckpts / "epoch-1" / "state.json").read_text())["epoch"] == 1
    from safetensors.torch import load_file
    assert load_file(ckpts / "epoch-1" / "adapter_model.safetensors")  # whole, readable
    assert torch.load(ckpts / "epoch-1" / "trainer.pt", weights_only=False)["optimizer"]["state"]
    assert not (first / "adapter").exists() and not (first / "run_summary.json").exists()
    assert (first / "base" / "config.json").exists()

    code, text = step(tmp_path, "resumed")
    assert code == 0, text[-3000:]
    assert "resumed from epoch-1" in text and "Traceback" not in text
    done = tmp_path / "after-resume"
    assert json.loads((done / "run_summary.json").read_text())["steps"] == 16
    assert sorted(p.name for p in (done / "checkpoints").iterdir()) == ["epoch-1", "epoch-2", "latest"]


@needs_ns
def test_full_disk_while_the_float_base_is_written_leaves_no_base_folder(tmp_path):
    config = demo(tmp_path, num_epochs=1)
    in_namespace(tmp_path, "mount -t tmpfs -o size=1m tmpfs $OUT\n"
                 + run("first", f"{ENVDOCTOR} train --python {sys.executable} {config} --force")
                 + "ls -a $OUT > $T/left\n")
    code, text = step(tmp_path, "first")
    line = one_error_line(text)
    assert code == 4, text[-3000:]
    assert line.startswith(f"error: cannot write the float base {tmp_path / 'out' / 'base'}: no space left on device "
                           "(needs 2.0 MB, "), line
    left = (tmp_path / "left").read_text().split()
    assert "base" not in left and ".base.tmp" not in left, left


@needs_ns
def test_full_disk_for_the_results_then_resume_writes_them_and_merge_stops_cleanly(tmp_path):
    config = demo(tmp_path, num_epochs=1)
    m = tmp_path / "m"
    m.mkdir()
    # 4.9 MB: the base (2.0 MB) and epoch-1 (2.5 MB) fit, the adapter (0.8 MB) does not.
    in_namespace(tmp_path, "mount -t tmpfs -o size=4900k tmpfs $OUT\n"
                 + run("first", f"{ENVDOCTOR} train --python {sys.executable} {config} --force")
                 + "ls -a $OUT > $T/left\n"
                 + "mount -o remount,size=64m $OUT\n"
                 + run("resumed", f"{ENVDOCTOR} train --python {sys.executable} {config} --resume")
                 + f"mount -t tmpfs -o size=1m tmpfs {m}\n"
                 + run("merge-small", f"{ENVDOCTOR} merge --python {sys.executable} $OUT --out {m}/merged")
                 + "ls -a " + str(m) + " > $T/left-small\n"
                 # a file-size limit (ulimit -f, in 512-byte blocks; Python ignores SIGXFSZ, so the write
                 # returns EFBIG): the free-space check passes, the 2 MB shard fails half-way
                 + run("merge-efbig", f"sh -c 'ulimit -f 1000; {ENVDOCTOR} merge --python {sys.executable} $OUT'")
                 + "ls -a $OUT > $T/left-efbig\n"
                 + "du -sb $OUT > $T/du\n")
    code, text = step(tmp_path, "first")
    line = one_error_line(text)
    assert code == 4, text[-3000:]
    assert line.startswith(f"error: cannot write {tmp_path / 'out' / 'adapter'}: no space left on device"), line
    assert "Training finished and its last checkpoint is kept" in line and "--resume" in line
    left = (tmp_path / "left").read_text().split()
    assert "adapter" not in left and ".adapter.tmp" not in left and "run_summary.json" not in left, left

    code, text = step(tmp_path, "resumed")
    assert code == 0 and "resumed from epoch-1" in text, text[-3000:]
    assert "step 1/8" not in text  # nothing trained again

    code, text = step(tmp_path, "merge-small")
    assert code == 4 and "Traceback" not in text, text
    assert f"cannot write the merged model to {m}/merged.unverified: it needs 2.0 MB, 1.0 MB free there" in text
    assert (tmp_path / "left-small").read_text().split() == [".", ".."]
    code, text = step(tmp_path, "merge-efbig")
    assert code == 4 and "Traceback" not in text, text
    assert "file too large" in text
    assert [n for n in (tmp_path / "left-efbig").read_text().split() if n.startswith(("merged", ".merged"))] == []

    # The preflight's estimate against what this run wrote (the base, one checkpoint, the results).
    from envdoctor.training.config import load
    from envdoctor.training.diskspace import run_bytes
    cfg = load(config).resolved()
    estimate = sum(v for k, v in run_bytes(cfg, cfg["model_config"], 4).items() if k != "checkpoint")
    wrote = int((tmp_path / "du").read_text().split()[0])
    assert 0.9 * wrote <= estimate <= 1.4 * wrote, (estimate, wrote)


@needs_ns
def test_preflight_refuses_a_run_the_disk_cannot_hold(tmp_path):
    config = demo(tmp_path)
    in_namespace(tmp_path, "mount -t tmpfs -o size=3m tmpfs $OUT\n"
                 + run("first", f"{ENVDOCTOR} train --python {sys.executable} {config}")
                 + "ls -a $OUT > $T/left\n")
    code, text = step(tmp_path, "first")
    assert code == 1, text
    assert (f"error: output_dir {tmp_path / 'out'}: 3.1 MB free on its filesystem, and this run writes about "
            "18.6 MB (6 checkpoint(s) of 2.5 MB") in text
    assert "--output-dir on another disk" in text and "qlora.py" not in text  # the runner never started


def test_write_errno_is_found_where_torch_and_safetensors_put_it(tmp_path):
    wrapped = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    wrapped.__context__ = OSError(28, "No space left on device")
    assert atomic.write_errno(wrapped) == 28
    assert atomic.write_errno(Exception("Error while serializing: I/O error: Disk quota exceeded (os error 122)")) == 122
    assert atomic.write_errno(ValueError("a bug, not a disk")) is None


def test_a_bug_raised_while_an_os_error_is_handled_is_not_a_write_error(tmp_path):
    """Every exception raised in an `except OSError:` block carries that error as its context: a bug there
    (inside a save, or the runner's result writing) must pass through staged() as itself, a traceback,
    not become WriteFailed ("cannot write …: no such file or directory", exit 4)."""
    with pytest.raises(KeyError):
        with atomic.staged(tmp_path / "adapter") as tmp:
            try:
                (tmp / "optional.json").read_text()
            except FileNotFoundError:
                {}["a bug in the fallback"]
    assert list(tmp_path.iterdir()) == []
    bug = TypeError("a bug")
    bug.__context__ = OSError(28, "No space left on device")
    assert atomic.write_errno(bug) is None


def test_staged_failure_keeps_the_old_folder_and_removes_the_staging_one(tmp_path):
    final = tmp_path / "adapter"
    final.mkdir()
    (final / "weights").write_text("old")
    with pytest.raises(atomic.WriteFailed) as err:
        with atomic.staged(final, needed=10) as tmp:
            (tmp / "weights").write_text("half")
            raise OSError(28, "No space left on device")
    assert err.value.out_of_space and err.value.line().startswith(f"cannot write {final}: no space left on device "
                                                                  "(needs 10 bytes, ")
    assert (final / "weights").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    with pytest.raises(ValueError):  # not a write error: passes through as it is, staging removed
        with atomic.staged(final) as tmp:
            raise ValueError("a bug")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    with atomic.staged(final) as tmp:
        (tmp / "weights").write_text("new")
    assert (final / "weights").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_a_stop_between_publishs_two_renames_keeps_the_old_folder_under_its_name(tmp_path, monkeypatch):
    """A name saved again (a re-run into the same --output-dir writes epoch-1 again): publish moves the old
    folder aside, then renames the new one in. A KeyboardInterrupt (Ctrl-C, SIGTERM) landing between the
    two renames must not leave the name empty: --resume would find no checkpoint and start over."""
    final = tmp_path / "epoch-1"
    final.mkdir()
    (final / "state.json").write_text("old")
    real, calls = os.replace, []

    def interrupted_after_the_first(a, b):
        calls.append(a)
        real(a, b)
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "replace", interrupted_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        with atomic.staged(final) as tmp:
            (tmp / "state.json").write_text("new")
    monkeypatch.setattr(atomic.os, "replace", real)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-1"]
    assert (final / "state.json").read_text() == "old"


def test_a_stop_while_the_latest_pointer_is_written_leaves_no_staging_file(tmp_path, monkeypatch):
    """A KeyboardInterrupt (Ctrl-C, SIGTERM) inside write_text: the pointer keeps its old text and its
    staging file is removed, as for a failed write (it was left in checkpoints/ for good)."""
    pointer = tmp_path / "latest"
    pointer.write_text("epoch-1")

    def stopped(_fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "fsync", stopped)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_text(pointer, "epoch-2")
    monkeypatch.undo()
    assert pointer.read_text() == "epoch-1" and sorted(p.name for p in tmp_path.iterdir()) == ["latest"]


def test_latest_puts_back_a_checkpoint_a_kill_left_aside(tmp_path):
    """SIGKILL (torchrun's, the OOM killer's) between publish's renames: the complete old checkpoint is
    under its aside name; latest() finds it there and puts it back."""
    from envdoctor_runner import checkpoint
    ckpts = tmp_path / "checkpoints"
    aside = ckpts / ".epoch-1.old-12345"
    aside.mkdir(parents=True)
    (aside / "state.json").write_text("{}")
    (ckpts / "latest").write_text("epoch-1")
    assert checkpoint.latest(tmp_path) == ckpts / "epoch-1"
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch-1", "latest"]


@needs_ns
def test_two_ranks_both_end_when_rank_0_cannot_write_a_checkpoint(tmp_path):
    """DDP over gloo: rank 0 alone writes, rank 1 waits for it; the save ends in one all-reduce of "did it
    fail" instead of a barrier, so rank 1 learns of the failure there and both exit 4 (no rank left in a
    collective until the 300 s timeout); the launcher ends with their code, 4."""
    config = demo(tmp_path, num_epochs=2)
    in_namespace(tmp_path, "mount -t tmpfs -o size=5800k tmpfs $OUT\n"
                 + run("first", f"{ENVDOCTOR} train --python {sys.executable} {config} --nproc 2 --force")
                 + "ls -a $OUT/checkpoints > $T/left\n")
    code, text = step(tmp_path, "first")
    assert code == 4, text[-3000:]  # train/launch.py passes the ranks' code on, adding no line of its own
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: cannot write checkpoint epoch-2"), text[-3000:]
    assert "The last good checkpoint is epoch-1" in errors[0]
    assert "(exitcode: 4)" in text, text[-3000:]  # torchrun's own log: the first rank to end did so with 4
    assert (tmp_path / "left").read_text().split() == [".", "..", "epoch-1", "latest"]


@needs_ns
def test_a_refused_run_leaves_no_folder_it_made_and_keeps_those_that_were_there(tmp_path):
    config = demo(tmp_path)
    in_namespace(tmp_path, "mount -t tmpfs -o size=3m tmpfs $OUT\n"
                 + run("new", f"{ENVDOCTOR} train --python {sys.executable} {config} --output-dir $OUT/new/run")
                 + "ls -a $OUT > $T/left-new\n"
                 + "mkdir -p $OUT/kept/empty && echo mine > $OUT/kept/file\n"
                 + run("kept", f"{ENVDOCTOR} train --python {sys.executable} {config} --output-dir $OUT/kept/empty")
                 + "find $OUT | sort > $T/left-kept\n")
    for name in ("new", "kept"):
        code, text = step(tmp_path, name)
        assert code == 1 and "free on its filesystem" in text and "qlora.py" not in text, text
    assert (tmp_path / "left-new").read_text().split() == [".", ".."]  # neither run/ nor new/
    out = tmp_path / "out"
    assert (tmp_path / "left-kept").read_text().split() == [str(out), str(out / "kept"), str(out / "kept/empty"),
                                                            str(out / "kept/file")]


@needs_ns
def test_preflight_counts_the_mid_epoch_checkpoints_save_steps_writes(tmp_path):
    """save_steps: every step-N checkpoint is kept (checkpoint.save deletes none), 2.5 MB each here. 12 MB
    holds the base, two epoch checkpoints and the adapter (8.8 MB) but not the five step checkpoints the run
    writes: the preflight says so before the start (a warning: it knows only an upper bound on the steps)."""
    config = demo(tmp_path, num_epochs=2, save_steps=3)
    in_namespace(tmp_path, "mount -t tmpfs -o size=12m tmpfs $OUT\n"
                 + run("small", f"{ENVDOCTOR} train --python {sys.executable} {config}")
                 + "mount -o remount,size=64m $OUT\n"
                 + run("full", f"{ENVDOCTOR} train --python {sys.executable} {config} --output-dir $OUT/full")
                 + "ls $OUT/full/checkpoints > $T/written\n")
    code, text = step(tmp_path, "small")
    before = text.split("$ ")[0]  # what the preflight said before the runner started
    warning = [line for line in before.splitlines() if line.startswith("warning: output_dir")]
    assert len(warning) == 1 and "the disk may fill before the end" in warning[0], text[-3000:]
    up_to = int(warning[0].split("up to ")[1].split()[0])
    assert code == 4 and "error: cannot write checkpoint step-" in text, text[-3000:]  # as warned

    code, text = step(tmp_path, "full")
    assert code == 0, text[-3000:]
    written = [n for n in (tmp_path / "written").read_text().split() if n.startswith("step-")]
    per_epoch = int(text.split(" optimizer steps per epoch")[0].rsplit(" ", 1)[1])  # the runner's own count
    from envdoctor.training.diskspace import mid_epoch_checkpoints
    assert len(written) == mid_epoch_checkpoints(per_epoch, 3, 0, 2) == 5, (written, per_epoch)
    assert up_to >= len(written)  # counted from an upper bound on the steps
