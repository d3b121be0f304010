"""No secret envdoctor can see is written anywhere: a token in every input channel we can reach (environment
variables, pip direct URLs of installed packages, training config keys), then every command that writes
files (check --json/--junit, fix and its logs, report merge), then every byte produced is searched."""

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from wheels import build_wheel

pytestmark = pytest.mark.slow

GH = "ghp_" + "G1thubSecretTokenValue0123456789"
HF_URL = "hf_" + "UrlSecretTokenValue0123456789abc"
SK = "sk-live-" + "SignatureSecret0123456789abcd"
HF_ENV = "hf_" + "EnvSecretTokenValue0123456789abc"
WANDB = "PlainWandbSecretValue0123456789"
HUB = "hf_" + "ConfigSecretTokenValue012345678"
SECRETS = {"github token in a git URL": GH, "hf token in a query": HF_URL, "signature in a query": SK,
           "HF_TOKEN": HF_ENV, "WANDB_API_KEY": WANDB, "hub_token in a config": HUB}


def _direct_url(py: Path, name: str, payload: dict) -> None:
    site = next((py.parent.parent / "lib").glob("python*/site-packages"))
    (next(site.glob(f"{name}-*.dist-info")) / "direct_url.json").write_text(json.dumps(payload))


def test_no_secret_reaches_any_file_envdoctor_writes(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    build_wheel(wheels, "torch", "2.8.0+cu128")
    build_wheel(wheels, "aopkg", "0.13.0", ["torch>=2.8"])
    build_wheel(wheels, "needs-ao", "1.0", ["aopkg>=0.13", "torch>=2.4"])
    build_wheel(wheels, "alpha", "1.0")
    build_wheel(wheels, "beta", "1.0")
    venv.EnvBuilder(with_pip=True).create(tmp_path / "venv")
    py = tmp_path / "venv" / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--find-links", str(wheels),
                    "torch==2.8.0+cu128", "needs-ao", "alpha", "beta"], check=True)
    _direct_url(py, "alpha", {"url": f"https://oauth2:{GH}@github.com/org/alpha",
                              "vcs_info": {"vcs": "git", "commit_id": "0123456789abcdef0123456789abcdef01234567"}})
    _direct_url(py, "beta", {"url": f"https://files.example.com/beta-1.0-py3-none-any.whl?token={HF_URL}&sig={SK}",
                             "archive_info": {}})
    frozen = subprocess.run([str(py), "-m", "pip", "freeze", "--all"], capture_output=True, text=True).stdout
    assert GH in frozen and HF_URL in frozen  # the channel really carries them

    out = tmp_path / "out"
    home = out / "home"
    home.mkdir(parents=True)
    config = tmp_path / "train.yaml"
    config.write_text(f"base_model: meta-llama/Llama-3.1-8B\nhub_token: {HUB}\nhf_token: {HUB}\n")
    env = {**os.environ, "HOME": str(home), "NO_COLOR": "1", "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels),
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "HF_TOKEN": HF_ENV, "WANDB_API_KEY": WANDB}
    env.pop("VIRTUAL_ENV", None)

    def envdoctor(*args):
        res = subprocess.run([sys.executable, "-m", "envdoctor", *args], capture_output=True, text=True, env=env,
                             cwd=out, stdin=subprocess.DEVNULL, timeout=600)
        (out / f"{args[0]}-{len(list(out.glob('*.stdout')))}.stdout").write_text(res.stdout + res.stderr)
        return res

    assert envdoctor("check", "--python", str(py), "--json", "--junit", str(out / "junit.xml"),
                     "--config", str(config)).returncode in (0, 1)
    envdoctor("check", "--python", str(py), "--format", "github", "-v")
    envdoctor("check", "--python", str(py), "--json").stdout
    (out / "node1.json").write_text(envdoctor("check", "--python", str(py), "--json").stdout)
    envdoctor("report", "merge", str(out / "node1.json"), str(out / "node1.json"), "--json")
    fixed = envdoctor("fix", "--all", "--yes", "--python", str(py))
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    logs = list((home / ".cache" / "envdoctor" / "logs").glob("*.log"))
    assert logs and any("alpha @ git+https://***@github.com/org/alpha" in p.read_text() for p in logs)

    written = [p for p in out.rglob("*") if p.is_file()]
    assert len(written) >= 8, written
    leaks = [(p.relative_to(out), what) for p in written for what, secret in SECRETS.items()
             if secret.encode() in p.read_bytes()]
    assert leaks == []


def test_no_secret_in_a_training_run_its_merge_and_eval(tmp_path):
    """train (a config with secret keys, tokens in the environment), merge and eval: every file of the run
    folder and every byte printed are searched. Unknown keys never reach config.resolved.json or the runner."""
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    import yaml
    from envdoctor.assets import asset
    cfg = yaml.safe_load(asset("train", "configs", "demo.yaml").read_text())
    cfg.update(num_epochs=1, datasets=[{"path": str(asset("train", "demo_corpus"))}], output_dir=str(tmp_path / "run"),
               hub_token=HUB, wandb_api_key=WANDB)
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "NO_COLOR": "1", "HF_TOKEN": HF_ENV, "WANDB_API_KEY": WANDB, "HOME": str(tmp_path / "home")}
    env.pop("VIRTUAL_ENV", None)
    printed = b""
    for args in (["train", str(config)], ["merge", str(tmp_path / "run")], ["eval", str(tmp_path / "run")]):
        res = subprocess.run([sys.executable, "-m", "envdoctor", *args, "--python", sys.executable],
                             capture_output=True, env=env, cwd=tmp_path, timeout=900)
        assert res.returncode == 0, (args, res.stdout[-2000:], res.stderr[-2000:])
        printed += res.stdout + res.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != config]
    assert {"config.resolved.json", "run_summary.json", "train.log", "envdoctor-merge.json"} <= {p.name for p in written}
    leaks = [(p.relative_to(tmp_path), what) for p in written for what, secret in SECRETS.items()
             if secret.encode() in p.read_bytes()]
    leaks += [("printed", what) for what, secret in SECRETS.items() if secret.encode() in printed]
    assert leaks == []
