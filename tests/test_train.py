"""`envdoctor train` for real on the CPU: the demo learns, a SIGKILLed run resumes, the preflight refuses."""

import json
import os
import signal
import subprocess
import sys
import time
import venv

import pytest
import yaml
from wheels import build_wheel

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
    proc = subprocess.Popen([sys.executable, "-m", "envdoctor", "train", "--python", sys.executable, str(config)],
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline:  # kill it in epoch 2, after the step-12 checkpoint (8 steps an epoch)
        steps = [json.loads(x).get("step", 0) for x in metrics.read_text().splitlines()] if metrics.exists() else []
        if steps and max(steps) >= 13:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text()
    assert latest in ("step-12", "step-15"), latest
    res = train(str(config), "--resume", cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:]
    assert f"resumed from {latest}" in res.stdout
    summary = json.loads((tmp_path / "run" / "run_summary.json").read_text())
    assert summary["steps"] == 24 and len(summary["val_loss"]) == 3


def test_preflight_refuses_a_run_with_a_failing_check(tmp_path):
    venv.EnvBuilder(with_pip=True).create(tmp_path / "venv")
    py = tmp_path / "venv" / "bin" / "python"
    wheel = build_wheel(tmp_path / "w", "needs-missing", "1.0", ["notinstalled-pkg>=1.0"])
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    res = subprocess.run([sys.executable, "-m", "envdoctor", "train", "--demo", "--python", str(py)],
                         capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=300)
    assert res.returncode == 1
    assert "[✗] packages.requirements: requirements: 1 missing" in res.stdout
    assert "refusing to start a run that cannot work" in res.stdout
    assert not (tmp_path / "envdoctor-demo-run" / "metrics.jsonl").exists()
