"""The command a stopped run prints to continue (envdoctor passes it to the runner): what was given that a
resume needs — the config or --demo, --output-dir, --fsdp (a checkpoint depends on it), --nproc, --python."""

from types import SimpleNamespace

from envdoctor.commands.train import resume_command


def args(**kw):
    return SimpleNamespace(**{"demo": False, "output_dir": None, "fsdp": False, "nproc": None, "python": None, **kw})


def test_the_resume_command_repeats_what_the_run_depends_on():
    assert resume_command(args(), "cfg.yaml", "/out") == "envdoctor train cfg.yaml --resume"
    assert resume_command(args(demo=True, output_dir="/tmp/my run", nproc=2, python="/v/bin/python"),
                          "/pkg/train/configs/demo.yaml", "/tmp/my run") == \
        "envdoctor train --demo --resume --output-dir '/tmp/my run' --nproc 2 --python /v/bin/python"
    assert resume_command(args(fsdp=True), "a b.yaml", "/out") == "envdoctor train 'a b.yaml' --resume --fsdp"
    # Several nodes: this node's own command (without the node flags, pasted on a node it ran alone).
    assert resume_command(args(nnodes=2, node_rank=1, rdzv_endpoint="node0:29500"), "cfg.yaml", "/out") == \
        "envdoctor train cfg.yaml --resume --nnodes 2 --node-rank 1 --rdzv-endpoint node0:29500"
    assert resume_command(args(nnodes=1), "cfg.yaml", "/out") == "envdoctor train cfg.yaml --resume"



def runner_outside_envdoctor(tmp_path, monkeypatch):
    """(train/qlora.py as a module, its resolved config at tmp_path, the output folder with checkpoint
    epoch-1), as a run started by itself sees them: no ENVDOCTOR_RESUME_COMMAND, rank 0; --output-dir
    elsewhere than the config file's own output_dir."""
    import importlib.util
    import json

    import pytest
    import yaml

    from envdoctor.assets import asset
    from envdoctor.training.config import resolve
    pytest.importorskip("torch")
    monkeypatch.delenv("ENVDOCTOR_RESUME_COMMAND", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.syspath_prepend(str(asset("train")))
    resolved = resolve(yaml.safe_load(asset("train", "configs", "demo.yaml").read_text()),
                       asset("train", "configs", "demo.yaml"))
    out = tmp_path / "elsewhere"
    resolved["output_dir"] = str(out)  # what `envdoctor train --output-dir` writes into config.resolved.json
    config = tmp_path / "config.resolved.json"
    config.write_text(json.dumps(resolved))
    (out / "checkpoints" / "epoch-1").mkdir(parents=True)
    (out / "checkpoints" / "epoch-1" / "state.json").write_text("{}")
    (out / "checkpoints" / "latest").write_text("epoch-1")
    spec = importlib.util.spec_from_file_location("qlora_under_test", asset("train", "qlora.py"))
    qlora = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(qlora)
    return qlora, config, out


def test_the_full_disk_line_of_a_runner_outside_envdoctor_names_the_command(tmp_path, monkeypatch):
    """checkpoint_failed's line builds its own resume command when envdoctor gave none: it used shlex,
    which qlora.py no longer imported (a NameError traceback in place of the one line)."""
    qlora, config, out = runner_outside_envdoctor(tmp_path, monkeypatch)
    cfg = qlora.config.load(str(config))
    failed = qlora.atomic.WriteFailed(out / "checkpoints" / "epoch-2", OSError(28, "No space left on device"))
    line = qlora.checkpoint_failed(failed, "epoch-2", cfg)
    assert line.endswith(f"The last good checkpoint is epoch-1: free space there, then continue with: "
                         f"envdoctor train {cfg['config_path']} --output-dir {out} --resume"), line


def test_a_runner_stopped_outside_envdoctor_names_its_own_output_dir(tmp_path, capsys, monkeypatch):
    """train/qlora.py run by itself (a Slurm script rerunning config.resolved.json, no envdoctor to pass
    ENVDOCTOR_RESUME_COMMAND) with an output_dir other than its config file's (envdoctor's --output-dir):
    the command printed on SIGTERM must continue in that folder, as the full-disk line's does; without
    --output-dir it resumed the config's own folder, found no checkpoint there and trained from scratch."""
    qlora, config, out = runner_outside_envdoctor(tmp_path, monkeypatch)
    assert qlora.interrupted(["qlora.py", "--config", str(config)], 15) == 143
    said = capsys.readouterr().out.strip()
    assert said.startswith("stopped by SIGTERM: the last checkpoint is epoch-1; continue with: ")
    assert said.endswith(f"--output-dir {out} --resume"), said
