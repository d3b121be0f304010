"""`envdoctor train` for real on the CPU: the demo learns, a SIGKILLed run resumes, the preflight refuses."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import yaml

from envdoctor.assets import asset

pytestmark = pytest.mark.slow
pytest.importorskip("transformers")
pytest.importorskip("peft")
ENV = {**os.environ, "NO_COLOR": "1"}
ENV.pop("VIRTUAL_ENV", None)


def train(*args, cwd, **kw):
    return subprocess.run([sys.executable, "-m", "envdoctor", "train", "--python", sys.executable, *args],
                          capture_output=True, text=True, cwd=cwd, env=ENV, timeout=900, **kw)


def test_demo_trains_and_its_loss_falls(tmp_path):
    res = train("--demo", "--output-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["final_loss"] < summary["first_loss"] - 1.0
    val = [v for _, v in summary["val_loss"]]
    assert val[-1] < val[0]
    assert summary["versions"]["torch"] and summary["base_model"] == "tiny-llama-from-config"
    assert (run / "adapter" / "adapter_config.json").exists() and (run / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 1 and any("val_loss" in r for r in rows)
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())[0] == "epoch-1"


def test_sigkill_mid_epoch_resumes_from_the_last_checkpoint(tmp_path):
    cfg = yaml.safe_load(asset("train", "configs", "demo.yaml").read_text())
    cfg.update(num_epochs=3, save_steps=3, datasets=[{"path": str(asset("train", "demo_corpus"))}],
               output_dir=str(tmp_path / "run"))
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "first-run.log"  # a file, not a pipe nobody reads: a full pipe would stall the run
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "envdoctor", "train", "--python", sys.executable,
                                 str(config)], cwd=tmp_path, env=ENV, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 600
    try:
        while True:  # kill it in epoch 2, after the step-12 checkpoint (8 steps an epoch)
            rows = metrics.read_text().splitlines(keepends=True) if metrics.exists() else []
            # only whole lines: the runner may be halfway through writing the last one
            if max((json.loads(x).get("step", 0) for x in rows if x.endswith("\n")), default=0) >= 13:
                break
            if proc.poll() is not None:  # ended (crashed, or finished) before step 13: no kill to test
                pytest.fail(f"the run ended with exit code {proc.returncode} before step 13:\n"
                            + log.read_text()[-3000:])
            if time.monotonic() > deadline:
                pytest.fail("no step 13 within 600 s:\n" + log.read_text()[-3000:])
            time.sleep(0.05)
    finally:
        try:  # the whole session: the doctor and the runner it started
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text()
    assert latest in ("step-12", "step-15"), latest
    res = train(str(config), "--resume", cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:]
    assert f"resumed from {latest}" in res.stdout
    summary = json.loads((tmp_path / "run" / "run_summary.json").read_text())
    assert summary["steps"] == 24 and len(summary["val_loss"]) == 3


def test_preflight_refuses_a_run_with_a_failing_check(tmp_path, venv_missing_a_requirement):
    py = venv_missing_a_requirement
    res = subprocess.run([sys.executable, "-m", "envdoctor", "train", "--demo", "--python", str(py)],
                         capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=300)
    assert res.returncode == 1
    assert "[✗] packages.requirements: requirements: 1 missing" in res.stdout
    assert "refusing to start a run that cannot work" in res.stdout
    assert not (tmp_path / "envdoctor-demo-run" / "metrics.jsonl").exists()


def stand_in_axolotl(tmp_path):
    """An `axolotl` executable on PATH that records how it was called."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "axolotl-calls.jsonl"
    exe = bindir / "axolotl"
    exe.write_text(f"#!{sys.executable}\nimport json, os, sys\n"  # what it was given, and PATH's first folder
                   f"open({str(record)!r}, 'a').write(json.dumps(sys.argv[1:] + [os.environ['PATH'].split(os.pathsep)[0]])"
                   " + '\\n')\nprint('stand-in axolotl ran')\n")
    exe.chmod(0o755)
    # Installed, as far as the target interpreter's metadata says (what `train --backend axolotl` asks first).
    site = tmp_path / "site"
    meta = site / "axolotl-0.19.0.dist-info"
    meta.mkdir(parents=True)
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: axolotl\nVersion: 0.19.0\n")
    (meta / "RECORD").write_text("axolotl-0.19.0.dist-info/METADATA,,\naxolotl-0.19.0.dist-info/RECORD,,\n")
    path = os.pathsep.join(p for p in (ENV.get("PYTHONPATH"), str(site)) if p)
    # bin last on PATH: the hand-off moves it first
    return {**ENV, "PATH": f"{ENV['PATH']}{os.pathsep}{bindir}", "PYTHONPATH": path}, record


def test_axolotl_backend_gets_the_users_config_after_a_passing_preflight(tmp_path):
    env, record = stand_in_axolotl(tmp_path)
    config = tmp_path / "demo.yaml"
    cfg = yaml.safe_load(asset("train", "configs", "demo.yaml").read_text())
    cfg = dict(cfg, datasets=[{"path": str(asset("train", "demo_corpus"))}])
    config.write_text(yaml.safe_dump(cfg))
    argv = [sys.executable, "-m", "envdoctor", "train", str(config), "--backend", "axolotl", "--python", sys.executable]
    res = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    # This torch has no CUDA, and axolotl would turn its Triton LoRA kernels on for adapter: qlora.
    assert res.returncode == 1 and "[✗] config.axolotl_device" in res.stdout and not record.exists()
    config.write_text(yaml.safe_dump(dict(cfg, lora_mlp_kernel=False, lora_qkv_kernel=False, lora_o_kernel=False,
                                          lora_embedding_kernel=False)))
    res = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "stand-in axolotl ran" in res.stdout and "config.axolotl_device ok" in res.stdout
    bindir = str(tmp_path / "bin")  # first on PATH: axolotl starts `accelerate launch` by name
    assert [json.loads(x) for x in record.read_text().splitlines()] == [["train", str(config), bindir]]
    res = subprocess.run([sys.executable, "-m", "envdoctor", "merge", str(config), "--backend", "axolotl"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert res.returncode == 0 and json.loads(record.read_text().splitlines()[-1]) == ["merge-lora", str(config), bindir]


def test_axolotl_backend_without_axolotl_says_so_first_with_the_pinned_install(tmp_path):
    """The target interpreter (this one) has no axolotl: that is the first thing said, with the pip command
    that keeps its torch, and nothing before it — not the config's errors (learning_rate is missing), nor
    the preflight's findings."""
    from importlib.metadata import version
    config = tmp_path / "axolotl.yaml"
    config.write_text("base_model: ./tiny\ndatasets:\n  - path: ./corpus.jsonl\nadapter: qlora\nmicro_batch_size: 2\n")
    res = subprocess.run([sys.executable, "-m", "envdoctor", "train", str(config), "--backend", "axolotl",
                          "--python", sys.executable], capture_output=True, text=True, cwd=tmp_path, env=ENV,
                         timeout=300)
    assert res.returncode == 1 and res.stderr == "", res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"error: axolotl is not installed in the target interpreter {sys.executable}: --backend " \
                       f"axolotl hands the work to its `axolotl train`. Install it, keeping torch {version('torch')}:"
    assert lines[1] == f"  {shlex.quote(sys.executable)} -m pip install 'axolotl' 'torch=={version('torch')}'"
    assert len(lines) == 3 and "error(s) in the config" not in res.stdout and "preflight" not in res.stdout


def test_axolotl_backend_is_never_called_after_a_failing_preflight(tmp_path, venv_missing_a_requirement):
    env, record = stand_in_axolotl(tmp_path)
    py = venv_missing_a_requirement
    res = subprocess.run([sys.executable, "-m", "envdoctor", "train", str(asset("train", "configs", "demo.yaml")),
                          "--backend", "axolotl", "--python", str(py)], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=300)
    assert res.returncode == 1 and "refusing to start a run that cannot work" in res.stdout
    assert not record.exists()


def test_two_process_gloo_run_matches_one_process(tmp_path):
    """`envdoctor train --nproc 2` on a CPU: torchrun, gloo, DDP. Each optimizer step's micro batches are dealt
    over the ranks (envdoctor_runner/schedule.py), so the updates equal one process's: the logged losses
    agree within 1e-4 (relative; measured: identical). Uneven layouts: tests/test_distributed_train.py."""
    cfg = yaml.safe_load(asset("train", "configs", "demo.yaml").read_text())
    cfg.update(num_epochs=2, gradient_accumulation_steps=2, datasets=[{"path": str(asset("train", "demo_corpus"))}])
    runs = {}
    for n in (1, 2):
        config = tmp_path / f"demo{n}.yaml"
        config.write_text(yaml.safe_dump(dict(cfg, output_dir=str(tmp_path / f"run{n}"))))
        res = train(str(config), "--nproc", str(n), cwd=tmp_path)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        runs[n] = tmp_path / f"run{n}"
    assert "launch.py --standalone --nproc-per-node 2" in res.stdout
    summary = json.loads((runs[2] / "run_summary.json").read_text())
    assert summary["world_size"] == 2
    losses = {n: [r["loss"] for r in map(json.loads, (runs[n] / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
              for n in runs}
    assert len(losses[1]) == len(losses[2]) == summary["steps"] > 4
    for a, b in zip(losses[1], losses[2]):
        assert abs(a - b) <= 1e-4 * abs(a), (losses[1], losses[2])
    assert losses[2][-1] < losses[2][0]
    # Only rank 0 writes: one metrics row per step and per epoch (not two), checkpoints written by rank 0.
    rows = (runs[2] / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == summary["steps"] + 2
    state = json.loads((runs[2] / "checkpoints" / "epoch-2" / "state.json").read_text())
    assert state["world_size"] == 2 and state["written_by_rank"] == 0


def test_fsdp_two_processes_match_one_ddp_free_process(tmp_path):
    """--fsdp: FSDP2 shards the LoRA model over 2 gloo processes; the losses equal a plain single-process
    run's (1e-4 relative), the adapter is gathered whole. A 4-bit base under FSDP: tests/test_fsdp4.py."""
    cfg = yaml.safe_load(asset("train", "configs", "demo.yaml").read_text())
    cfg.update(num_epochs=2, gradient_accumulation_steps=2, load_in_4bit=False, adapter="lora",
               datasets=[{"path": str(asset("train", "demo_corpus"))}])
    runs = {}
    for n, extra in ((1, []), (2, ["--fsdp"])):
        config = tmp_path / f"demo{n}.yaml"
        config.write_text(yaml.safe_dump(dict(cfg, output_dir=str(tmp_path / f"run{n}"))))
        res = train(str(config), "--nproc", str(n), *extra, cwd=tmp_path)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        runs[n] = tmp_path / f"run{n}"
    assert "sharded over 2 process(es) (FSDP)" in res.stdout
    losses = {n: [r["loss"] for r in map(json.loads, (runs[n] / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
              for n in runs}
    assert len(losses[1]) == len(losses[2]) > 4
    for a, b in zip(losses[1], losses[2]):
        assert abs(a - b) <= 1e-4 * abs(a), (losses[1], losses[2])
    from safetensors.torch import load_file
    one, two = (load_file(str(runs[n] / "adapter" / "adapter_model.safetensors")) for n in (1, 2))
    assert one.keys() == two.keys() and all(one[k].shape == two[k].shape for k in one)


def test_a_metrics_log_that_cannot_be_trimmed_on_resume_is_a_warning_not_a_traceback(tmp_path):
    """Resuming trims metrics.jsonl to the checkpoint's step (rank 0 only, before the first collective): a log
    it cannot read or rewrite was a traceback on rank 0 (and, with several processes, the others left in a
    collective). Like any metrics write, it is now a warning and the run goes on."""
    cfg = yaml.safe_load(asset("train", "configs", "demo.yaml").read_text())
    cfg.update(num_epochs=2, datasets=[{"path": str(asset("train", "demo_corpus"))}], output_dir=str(tmp_path / "run"))
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert train(str(config), cwd=tmp_path).returncode == 0
    run = tmp_path / "run"
    import shutil
    shutil.rmtree(run / "checkpoints" / "epoch-2")  # as if stopped after epoch 1
    (run / "checkpoints" / "latest").write_text("epoch-1")
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").mkdir()  # unreadable as a file: what a damaged log looks like to open()
    res = train(str(config), "--resume", cwd=tmp_path)
    assert res.returncode == 0 and "Traceback" not in res.stdout + res.stderr, res.stdout[-3000:] + res.stderr[-2000:]
    assert f"warning: could not trim {run / 'metrics.jsonl'} to step 8 (Is a directory)" in res.stdout
    assert json.loads((run / "run_summary.json").read_text())["steps"] == 16
    assert not (run / ".metrics.jsonl.tmp").exists()
