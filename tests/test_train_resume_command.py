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
