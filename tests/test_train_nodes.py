"""`envdoctor train --nnodes N --node-rank R --rdzv-endpoint HOST:PORT`: the torchrun line, and the arguments
refused before anything runs (the runs themselves: tests/test_distributed_train.py)."""

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from envdoctor.assets import asset
from envdoctor.commands.train import check_nodes, launcher_argv, output_dir_problem
from envdoctor.context import Context
from envdoctor.errors import UsageError


def test_several_nodes_use_torchruns_static_rendezvous():
    ctx = Context(sys.executable, "test")
    launch = str(asset("train", "launch.py"))  # torchrun's arguments, a quiet stop (tests/test_train_hygiene.py)
    assert launcher_argv(ctx, 4, "qlora.py", 2, 1, "head:29500") == [
        sys.executable, launch, "--nnodes", "2", "--node-rank", "1", "--rdzv-backend",
        "static", "--rdzv-endpoint", "head:29500", "--nproc-per-node", "4", "qlora.py"]
    assert launcher_argv(ctx, 2, "qlora.py")[1:3] == [launch, "--standalone"]
    assert launcher_argv(ctx, 1, "q.py") == [sys.executable, "q.py"]


@pytest.mark.parametrize("nnodes,rank,endpoint,says", [
    (2, 0, None, "--nnodes 2 needs --rdzv-endpoint HOST:PORT"),
    (2, 2, "h:1", "--node-rank 2: expected 0..1"),
    (1, 1, None, "--node-rank and --rdzv-endpoint go with --nnodes N"),
    (2, 1, "host", "--rdzv-endpoint 'host': expected HOST:PORT"),
    (2, 1, "host:99999", "expected HOST:PORT"),
    (0, 0, None, "--nnodes must be at least 1"),
    (2, None, "h:1", "--nnodes 2 needs --node-rank R on each node"),
])
def test_inconsistent_node_arguments_are_refused(nnodes, rank, endpoint, says):
    with pytest.raises(UsageError, match=says.replace("(", r"\(").replace(")", r"\)")):
        check_nodes(SimpleNamespace(nnodes=nnodes, node_rank=rank, rdzv_endpoint=endpoint))
    check_nodes(SimpleNamespace(nnodes=2, node_rank=1, rdzv_endpoint="10.0.0.1:29500"))


def test_the_cli_refuses_before_the_preflight(tmp_path):
    res = subprocess.run([sys.executable, "-m", "envdoctor", "train", "--demo", "--nnodes", "2"], capture_output=True,
                         text=True, cwd=tmp_path, env={**os.environ, "NO_COLOR": "1"}, timeout=60)
    assert res.returncode == 2 and "--nnodes 2 needs --rdzv-endpoint" in res.stderr + res.stdout
    assert "preflight" not in res.stdout


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_output_dir_is_named(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert "output_dir " + str(locked / "run") + " is not writable" in output_dir_problem(locked / "run")
        assert output_dir_problem(tmp_path / "ok" / "run") is None
    finally:
        locked.chmod(0o700)
