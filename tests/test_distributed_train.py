"""Data parallel that cannot hang: micro-batch counts that do not divide over 2 gloo processes (odd, prime,
fewer than the processes) finish and log one process's losses; two torchrun "nodes" on this machine (static
rendezvous, each started by its own `envdoctor train`) do too; a rank stuck in a collective is stopped,
named with its step."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import yaml

from envdoctor.assets import asset

pytestmark = pytest.mark.slow
pytest.importorskip("transformers")
pytest.importorskip("peft")
ENV = {**os.environ, "NO_COLOR": "1"}
ENV.pop("VIRTUAL_ENV", None)

# The demo corpus gives 31 training chunks (a prime) and 3 validation chunks.
CASES = {
    "prime": dict(micro_batch_size=1, gradient_accumulation_steps=4,    # 31 micro batches: 7 steps of 4, one of 3
                  save_steps=3),
    "odd": dict(micro_batch_size=3, gradient_accumulation_steps=3),     # 11 micro batches, each step split 2 + 1
    "fewer": dict(micro_batch_size=31, gradient_accumulation_steps=1),  # 1 micro batch (all 31 chunks), 2 processes
}


def config(tmp, name, run, **extra):
    cfg = yaml.safe_load(asset("train", "configs", "demo.yaml").read_text())
    # bf16-free plain LoRA: fast on this CPU; the schedule is what is tested, not NF4.
    cfg.update(num_epochs=1, load_in_4bit=False, adapter="lora", datasets=[{"path": str(asset("train", "demo_corpus"))}],
               output_dir=str(tmp / run), **CASES[name], **extra)
    path = tmp / f"{run}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start(path, *args, cwd):
    return subprocess.Popen([sys.executable, "-m", "envdoctor", "train", "--python", sys.executable, str(path), *args],
                            cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc):
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return out


def losses(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r], [r["val_loss"] for r in rows if "val_loss" in r]


def close(a, b):
    """Today's tolerance (tests/test_train.py): 1e-4 relative."""
    return len(a) == len(b) and all(abs(x - y) <= 1e-4 * abs(x) for x, y in zip(a, b))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case on 1 and 2 processes, and the prime case on two nodes of one process each (the two
    `envdoctor train` run at once, as on two machines); shared by the tests below (each run costs seconds)."""
    tmp = tmp_path_factory.mktemp("dist")
    out = {}
    for name in CASES:
        for n in (1, 2):
            out[name, n] = finish(start(config(tmp, name, f"{name}{n}"), "--nproc", str(n), cwd=tmp))
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [start(config(tmp, "prime", "nodes"), "--nnodes", "2", "--node-rank", str(r), "--rdzv-endpoint",
                   endpoint, cwd=tmp) for r in (0, 1)]
    for r, proc in enumerate(nodes):
        out["nodes", r] = finish(proc)
    return tmp, out


@pytest.mark.parametrize("name", list(CASES))
def test_uneven_micro_batches_finish_and_match_one_process(runs, name):
    tmp, out = runs
    assert "--standalone --nproc-per-node 2" in out[name, 2]
    assert "Setting OMP_NUM_THREADS" not in out[name, 2], out[name, 2][:2000]  # the launcher set it: torchrun is quiet
    one, two = losses(tmp / f"{name}1"), losses(tmp / f"{name}2")
    assert close(one[0], two[0]), (one, two)
    assert close(one[1], two[1]), (one, two)
    summary = json.loads((tmp / f"{name}2" / "run_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == len(one[0]) == {"prime": 8, "odd": 4, "fewer": 1}[name]


def test_two_nodes_through_the_static_rendezvous_match_one_process(runs):
    tmp, out = runs
    assert "--nnodes 2 --node-rank 1 --rdzv-backend static --rdzv-endpoint 127.0.0.1:" in out["nodes", 1]
    assert "must be one shared folder" in out["nodes", 0] and "preflight" in out["nodes", 1]
    one, nodes = losses(tmp / "prime1"), losses(tmp / "nodes")
    assert close(one[0], nodes[0]) and close(one[1], nodes[1]), (one, nodes)
    summary = json.loads((tmp / "nodes" / "run_summary.json").read_text())
    assert summary["world_size"] == 2 and not list((tmp / "nodes").glob(".config.resolved*.tmp"))


@pytest.mark.parametrize("given", [None, "3"])
def test_the_launcher_shares_the_cores_among_the_ranks_unless_omp_num_threads_is_given(tmp_path, given):
    """No OMP_NUM_THREADS: each rank gets the cores this process may use divided by the ranks per node (at
    least 1), without torchrun's banner; the user's own value is kept."""
    script = tmp_path / "omp.py"
    script.write_text("import os, sys\nsys.stdout.write(f\"rank {os.environ['RANK']} omp {os.environ.get('OMP_NUM_THREADS')}\\n\")\n")
    env = {k: v for k, v in ENV.items() if k != "OMP_NUM_THREADS"} | ({"OMP_NUM_THREADS": given} if given else {})
    res = subprocess.run([sys.executable, str(asset("train", "launch.py")), "--standalone", "--nproc-per-node", "2",
                          str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=100, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    want = given or str(max(1, len(os.sched_getaffinity(0)) // 2))
    assert sorted(x for x in res.stdout.splitlines() if x.startswith("rank")) == [f"rank 0 omp {want}",
                                                                                 f"rank 1 omp {want}"], res.stdout
    assert "OMP_NUM_THREADS" not in res.stderr and "Warning" not in res.stderr, res.stderr


def test_a_two_process_mid_epoch_checkpoint_resumes_on_one_process(runs):
    """Checkpoints hold the data position as global micro batches: step-3 of the 2-process run, resumed by
    one process, continues with one process's losses."""
    tmp, _ = runs
    resumed = tmp / "resumed"
    shutil.copytree(tmp / "prime2", resumed)
    (resumed / "checkpoints" / "latest").write_text("step-3")
    (resumed / "metrics.jsonl").write_text("")
    out = finish(start(config(tmp, "prime", "resumed"), "--nproc", "1", "--resume", cwd=tmp))
    assert "resumed from step-3" in out
    one, again = losses(tmp / "prime1"), losses(resumed)
    assert close(one[0][3:], again[0]) and close(one[1], again[1]), (one, again)


def test_a_rank_waiting_for_a_collective_that_never_comes_is_stopped_and_named(tmp_path):
    """What used to hang forever (one rank in an all-reduce the other never joins) ends within the timeout
    (ENVDOCTOR_COLLECTIVE_TIMEOUT_S), naming the rank and the step."""
    script = tmp_path / "stuck.py"
    script.write_text(f"""import sys, time
sys.path.insert(0, {str(asset("train"))!r})
import torch, torch.distributed as dist
from envdoctor_runner import distributed
world = distributed.init()
watchdog = distributed.Watchdog(world)
if world.rank == 0:  # only the waiting rank is watched: rank 1's own watchdog would race it to the exit
    watchdog.at("epoch 1, optimizer step 5")
    dist.all_reduce(torch.ones(1))
else:
    time.sleep(120)
""")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=100,
                         env={**ENV, "ENVDOCTOR_COLLECTIVE_TIMEOUT_S": "3"})
    assert res.returncode != 0
    assert "error: rank 0: no progress for 3 s in epoch 1, optimizer step 5" in res.stderr, res.stderr[-3000:]


def test_nodes_that_do_not_share_the_output_folder_or_the_data_are_told_so(tmp_path):
    """Two ranks that see different output folders (as two nodes without a shared filesystem would) and
    different token chunks: both checks say so on every rank, without a hang."""
    script = tmp_path / "nodes.py"
    script.write_text(f"""import pathlib, sys
sys.path.insert(0, {str(asset("train"))!r})
from envdoctor_runner import distributed
world = distributed.init()
out = pathlib.Path({str(tmp_path)!r}) / f"out{{world.rank}}"
out.mkdir()
shared = pathlib.Path({str(tmp_path)!r}) / "shared"
shared.mkdir(exist_ok=True)
parts = [f"rank {{world.rank}}", distributed.shared_output_problem(shared, world) is None,
         distributed.shared_output_problem(out, world), distributed.same_data([[[1, 2, 3]], [[4]]], world),
         distributed.same_data([[[1, 2, 3]], [[4 + world.rank]]], world)]
sys.stdout.write(" ".join(map(str, parts)) + chr(10))  # one write: the two ranks share the pipe
sys.stdout.flush()
distributed.finish(world)
distributed.leave(0)  # as the runner leaves: a live gloo group at interpreter exit can abort
""")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=100, env=ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    for rank in (0, 1):
        line = next((x for x in res.stdout.splitlines() if x.startswith(f"rank {rank} ")), res.stdout)
        assert line.startswith(f"rank {rank} True output_dir {tmp_path / 'out'}") and line.endswith("True False")
        assert "is not one shared folder for every rank" in line
    assert not list(tmp_path.glob("*/.envdoctor-shared-check"))
