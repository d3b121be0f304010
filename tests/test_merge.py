"""`envdoctor merge`, `check --model` and `eval` for real on the CPU: a demo run merged and verified, a
second merge that does nothing, a model folder judged, the merged model closer to its corpus than its
base, and the tensor-by-tensor merge holding far less memory than the model it writes."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from envdoctor.assets import asset

pytestmark = pytest.mark.slow
pytest.importorskip("transformers")
pytest.importorskip("peft")
ENV = {**os.environ, "NO_COLOR": "1"}
ENV.pop("VIRTUAL_ENV", None)


PEAK_RSS = """
import json, os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(proc.pid, 0)
print(json.dumps({"peak_rss": usage.ru_maxrss * 1024}))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def envdoctor(*args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "envdoctor", *args], capture_output=True, text=True, cwd=cwd,
                          env=ENV, timeout=timeout)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    res = envdoctor("train", "--demo", "--python", sys.executable, "--output-dir", str(tmp / "run"), cwd=tmp)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return tmp / "run"


def test_merge_verifies_and_a_second_merge_is_a_no_op(demo_run):
    res = envdoctor("merge", str(demo_run), "--python", sys.executable, cwd=demo_run)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    merged = demo_run / "merged"
    names = sorted(p.name for p in merged.iterdir())
    assert not [n for n in names if n.startswith("adapter")]
    assert {"config.json", "generation_config.json", "tokenizer.json", "model.safetensors.index.json"} <= set(names)
    assert json.loads((merged / "config.json").read_text())["dtype"] == "float32"
    verify = json.loads((merged / "verify_report.json").read_text())
    assert verify["passed"] and verify["max_abs_diff"] < 1e-4 and verify["argmax_agreement"] == 1.0
    assert verify["adapter_effect"] > 0.1  # the adapter did change the model: the comparison means something
    report = json.loads((merged / "merge_report.json").read_text())
    assert report["lora_merged"] == 14 and report["replaced"] == ["lm_head.weight", "model.embed_tokens.weight"]
    before = {p.name: p.stat().st_mtime_ns for p in merged.iterdir()}
    again = envdoctor("merge", str(demo_run), "--python", sys.executable, cwd=demo_run)
    assert again.returncode == 0 and "already merged" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in merged.iterdir()} == before


def test_bf16_merge_and_nf4_merge_show_their_difference(demo_run):
    res = envdoctor("merge", str(demo_run), "--dtype", "bfloat16", "--out", str(demo_run / "m16"),
                    "--python", sys.executable, cwd=demo_run)
    assert res.returncode == 0, res.stdout[-3000:]
    bf16 = json.loads((demo_run / "m16" / "verify_report.json").read_text())
    res = envdoctor("merge", str(demo_run), "--from-nf4", "--python", sys.executable, cwd=demo_run)
    assert res.returncode == 0 and "NF4-dequantized base" in res.stdout, res.stdout[-3000:]
    nf4 = json.loads((demo_run / "merged-nf4" / "verify_report.json").read_text())
    exact = json.loads((demo_run / "merged" / "verify_report.json").read_text()) if \
        (demo_run / "merged" / "verify_report.json").exists() else {"mean_abs_diff": 0.0}
    assert exact["mean_abs_diff"] < bf16["mean_abs_diff"] < nf4["mean_abs_diff"]


def test_check_model_passes_the_merge_and_fails_an_adapter_folder(demo_run):
    if not (demo_run / "merged" / "config.json").exists():
        assert envdoctor("merge", str(demo_run), "--python", sys.executable, cwd=demo_run).returncode == 0
    res = envdoctor("check", "--model", str(demo_run / "merged"), "--only", "model", "--python", sys.executable,
                    "--json", cwd=demo_run)
    results = {r["id"]: r for r in json.loads(res.stdout)["results"]}
    assert results["model.files"]["status"] == "ok" and results["model.loads"]["status"] == "ok"
    assert results["model.tokenizer"]["status"] == "ok"  # the demo tokenizer carries a chat template
    assert results["model.vllm"]["status"] == "skip"
    res = envdoctor("check", "--model", str(demo_run / "adapter"), "--only", "model", "--python", sys.executable,
                    cwd=demo_run)
    assert res.returncode == 1 and "is a LoRA adapter, not a model" in res.stdout


def test_eval_scores_the_merged_model_closer_to_its_corpus(demo_run):
    if not (demo_run / "merged" / "config.json").exists():
        assert envdoctor("merge", str(demo_run), "--python", sys.executable, cwd=demo_run).returncode == 0
    res = envdoctor("eval", str(demo_run), "--python", sys.executable, cwd=demo_run)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads((demo_run / "eval_report.json").read_text())
    assert report["closer_to_corpus"] == "merged"
    assert report["merged"]["style_score"] > report["base"]["style_score"]
    assert report["merged"]["perplexity"] < report["base"]["perplexity"]


def test_tensor_by_tensor_merge_holds_far_less_than_the_model(tmp_path):
    """A 1.1 GB fp32 base (Llama tensor names, random values) and a rank-8 adapter on every projection:
    merge.py's peak RSS stays well below the model's size, and a merged tensor equals W + (alpha/r)·B·A."""
    import torch
    from safetensors.torch import load_file, save_file
    h, inter, layers, vocab = 1024, 4096, 14, 16000
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir()
    adapter.mkdir()
    g = torch.Generator().manual_seed(0)
    names = {"model.embed_tokens.weight": (vocab, h), "lm_head.weight": (vocab, h), "model.norm.weight": (h,)}
    for i in range(layers):
        for proj, shape in (("self_attn.q_proj", (h, h)), ("self_attn.k_proj", (h, h)), ("self_attn.v_proj", (h, h)),
                            ("self_attn.o_proj", (h, h)), ("mlp.gate_proj", (inter, h)), ("mlp.up_proj", (inter, h)),
                            ("mlp.down_proj", (h, inter))):
            names[f"model.layers.{i}.{proj}.weight"] = shape
    index, shard, size, n = {}, {}, 0, 0
    for name, shape in names.items():  # written in ~300 MB shards, as a hub model would be
        shard[name] = torch.randn(shape, generator=g) * 0.02
        size += shard[name].numel() * 4
        if size > 300e6 or name == list(names)[-1]:
            n += 1
            save_file(shard, base / f"model-{n:05d}.safetensors", metadata={"format": "pt"})
            index.update({k: f"model-{n:05d}.safetensors" for k in shard})
            shard, size = {}, 0
    (base / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    (base / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "dtype": "float32"}))
    lora = {}
    for name, shape in names.items():
        if ".layers." in name:
            stem = "base_model.model." + name[:-len(".weight")]
            lora[f"{stem}.lora_A.weight"] = torch.randn(8, shape[1], generator=g) * 0.01
            lora[f"{stem}.lora_B.weight"] = torch.randn(shape[0], 8, generator=g) * 0.01
    save_file(lora, adapter / "adapter_model.safetensors")
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16}))
    model_bytes = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    # The peak RSS of merge.py alone, from wait4 in a small launcher: a child forked from pytest itself would
    # start with pytest's resident pages counted in its ru_maxrss.
    res = subprocess.run([sys.executable, "-c", PEAK_RSS, sys.executable, str(asset("train", "merge.py")), "--base",
                          str(base), "--adapter", str(adapter), "--out", str(tmp_path / "out"), "--device", "cpu",
                          "--max-shard-gb", "0.4"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    out = res.stdout
    peak = json.loads(out.strip().splitlines()[-1])["peak_rss"]
    print(f"model {model_bytes / 1e9:.2f} GB, merge.py peak RSS {peak / 1e9:.2f} GB")
    assert model_bytes > 1.0e9 and peak < 0.5 * model_bytes
    report = json.loads(out.strip().splitlines()[-2])
    assert report["lora_merged"] == layers * 7 and report["shards"] >= 3
    name = "model.layers.3.mlp.down_proj.weight"
    got = load_file(str(tmp_path / "out" / json.loads((tmp_path / "out" / "model.safetensors.index.json")
                                                      .read_text())["weight_map"][name]))[name]
    w = load_file(str(base / index[name]))[name]
    stem = "base_model.model.model.layers.3.mlp.down_proj"
    want = w + 2.0 * lora[f"{stem}.lora_B.weight"] @ lora[f"{stem}.lora_A.weight"]
    assert torch.allclose(got, want, atol=1e-6)



def test_merge_names_what_the_target_environment_lacks(tmp_path):
    """A target without torch/peft: a clear usage error (exit 2) before anything runs, not a traceback."""
    import venv
    venv.EnvBuilder(with_pip=False).create(tmp_path / "bare")
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "base").mkdir()
    (run / "base" / "config.json").write_text("{}")
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"x")
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "run_summary.json").write_text(json.dumps({"base_model_path": str(run / "base")}))
    res = envdoctor("merge", str(run), "--python", str(tmp_path / "bare" / "bin" / "python"), cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "needs torch, safetensors, transformers, peft in the target environment" in res.stderr
    assert not (run / "merged").exists()


def test_a_merge_killed_during_verification_is_never_published(demo_run, tmp_path):
    """merge.py finishes, then the process verifying it dies: the model files stay under DEST.unverified,
    DEST itself never appears, and `check --model` on the staging folder fails for want of a verification."""
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\ncase "$1" in *verify.py) kill -9 $$ ;; esac\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    dest = tmp_path / "killed"
    res = envdoctor("merge", str(demo_run), "--out", str(dest), "--python", str(wrapper), cwd=tmp_path)
    assert res.returncode == 1 and "unverified merge stays in" in res.stdout, res.stdout[-2000:]
    stage = tmp_path / "killed.unverified"
    assert not dest.exists() and (stage / "model.safetensors.index.json").is_file()
    assert not (stage / "envdoctor-merge.json").exists()
    res = envdoctor("check", "--model", str(stage), "--only", "model.files", "--python", sys.executable, "--json",
                    cwd=tmp_path)
    files = json.loads(res.stdout)["results"][0]
    assert res.returncode == 1 and files["status"] == "fail"
    assert any("never verified" in d for d in files["details"]), files


# -- the merge pipeline (train/envdoctor_runner/merge_pipeline.py): threads, order, errors, memory ----------

def _runner_modules():
    sys.path.insert(0, str(asset("train")))
    from envdoctor_runner import merge_pipeline, safetensors_stream
    return merge_pipeline, safetensors_stream


def _small_base(tmp_path):
    """Two safetensors files of mixed shapes and dtypes, and the specs of two output shards."""
    import torch
    from safetensors.torch import save_file
    g = torch.Generator().manual_seed(0)
    tensors = {f"t{i:02d}": (torch.randn((i + 1) * 7, 33, generator=g)).to(torch.bfloat16 if i % 2 else torch.float32)
               for i in range(12)}
    files = {}
    for part, names in enumerate((list(tensors)[:5], list(tensors)[5:])):
        path = tmp_path / f"in-{part}.safetensors"
        save_file({n: tensors[n] for n in names}, str(path))
        files.update({n: path for n in names})
    return tensors, files


def _pipeline_write(tmp_path, out_name, read_delay=None, write_delay=None, **kw):
    import os
    import random
    import time
    mp, sts = _runner_modules()
    tensors, files = _small_base(tmp_path)
    heads = {f: sts.header(f) for f in set(files.values())}
    names = sorted(tensors)
    groups = [names[:7], names[7:]]
    out = tmp_path / out_name
    out.mkdir()
    writers = [sts.ShardWriter(out / f"s{i}.safetensors", [(n, tensors[n].dtype, list(tensors[n].shape)) for n in g])
               for i, g in enumerate(groups)]
    tasks = [mp.Task(n, i, tensors[n].nbytes) for i, g in enumerate(groups) for n in g]
    fds = {f: os.open(f, os.O_RDONLY) for f in heads}
    rnd = random.Random(1)

    def read(task):
        if read_delay:
            time.sleep(rnd.random() * read_delay)
        return sts.read_at(fds[files[task.name]], files[task.name], task.name, *heads[files[task.name]])

    class Slow:
        def __init__(self, w):
            self.w = w

        def write_at(self, name, t):
            time.sleep(rnd.random() * write_delay)
            return self.w.write_at(name, t)

        def __getattr__(self, a):
            return getattr(self.w, a)

    try:
        timings = mp.run(tasks, read, lambda task, t: t * 2, [Slow(w) for w in writers] if write_delay else writers,
                         budget=kw.pop("budget", 1 << 30), **kw)
    finally:
        for fd in fds.values():
            os.close(fd)
    return out, groups, tensors, timings


def test_pipeline_output_does_not_depend_on_thread_timing(tmp_path):
    """Readers and writers finishing in random order: every shard is byte for byte what the sequential
    writer writes, tensor after tensor."""
    from safetensors.torch import load_file
    _, sts = _runner_modules()
    out, groups, tensors, timings = _pipeline_write(tmp_path, "piped", read_delay=0.01, write_delay=0.01,
                                                    readers=3, write_threads=4)
    ref = tmp_path / "ref"
    ref.mkdir()
    for i, g in enumerate(groups):
        w = sts.ShardWriter(ref / f"s{i}.safetensors", [(n, tensors[n].dtype, list(tensors[n].shape)) for n in g])
        for n in g:
            w.write(n, tensors[n] * 2)
        w.close()
        assert (out / f"s{i}.safetensors").read_bytes() == (ref / f"s{i}.safetensors").read_bytes()
        assert list(load_file(str(out / f"s{i}.safetensors"))) == g
    assert not list(out.glob("*.tmp")) and timings.bytes_written == sum(t.nbytes for t in tensors.values())


def test_an_error_in_a_reader_stops_the_pipeline_with_its_name(tmp_path):
    import threading
    mp, _ = _runner_modules()
    tasks = [mp.Task(f"t{i}", 0, 10) for i in range(50)]
    written = []

    class Writer:
        def write_at(self, name, t):
            written.append(name)
            return 10

        def sync(self):
            raise AssertionError("a failed pipeline is never synced")

        finish = sync

        def abandon(self):
            written.append("abandoned")

    def read(task):
        if task.name == "t7":
            raise ValueError("model-00002.safetensors: t7 is truncated")
        return task.name

    box = []
    th = threading.Thread(target=lambda: box.append(_catch(lambda: mp.run(tasks, read, lambda t, v: v, [Writer()],
                                                                            budget=30, readers=2))))
    th.start()
    th.join(30)
    assert not th.is_alive(), "the pipeline hung after a reader failed"
    err = box[0]
    assert isinstance(err, mp.PipelineError)
    assert str(err) == "merge reader failed (t7): ValueError: model-00002.safetensors: t7 is truncated"
    assert written[-1] == "abandoned" and "t7" not in written


def test_an_error_in_a_writer_or_the_merge_stops_the_pipeline(tmp_path):
    import threading
    mp, _ = _runner_modules()
    tasks = [mp.Task(f"t{i}", 0, 10) for i in range(50)]

    class Writer:
        def __init__(self, bad):
            self.bad, self.abandoned = bad, False

        def write_at(self, name, t):
            if name == self.bad:
                raise OSError(28, "No space left on device")
            return 10

        def sync(self):
            pass

        def finish(self):
            return 0

        def abandon(self):
            self.abandoned = True

    def merge_fails(task, v):
        if task.name == "t12":
            raise RuntimeError("CUDA out of memory")
        return v

    for writer, merge, want in ((Writer("t3"), lambda t, v: v, "merge writer failed (t3): OSError: [Errno 28] No space "
                                                             "left on device"),
                                (Writer(None), merge_fails, "merge merge failed (t12): RuntimeError: CUDA out of memory")):
        box = []
        th = threading.Thread(target=lambda: box.append(_catch(lambda: mp.run(tasks, lambda t: t.name, merge, [writer],
                                                                                budget=30))))
        th.start()
        th.join(30)
        assert not th.is_alive(), f"the pipeline hung: {want}"
        assert isinstance(box[0], mp.PipelineError) and str(box[0]) == want and writer.abandoned


def test_bytes_in_flight_stay_within_the_budget(tmp_path):
    """Slow writers, fast readers: reading waits for room. A tensor larger than the whole budget still
    passes, alone."""
    import threading
    import time
    mp, _ = _runner_modules()
    sizes = [30, 40, 30, 30, 250, 30, 40, 30, 30, 30]
    tasks = [mp.Task(f"t{i}", 0, n) for i, n in enumerate(sizes)]
    live, peak, lock = [0], [0], threading.Lock()

    def read(task):
        with lock:
            live[0] += task.nbytes
            peak[0] = max(peak[0], live[0])
        return bytearray(task.nbytes)

    class Writer:
        def write_at(self, name, t):
            time.sleep(0.01)
            with lock:
                live[0] -= len(t)
            return len(t)

        def sync(self):
            pass

        def finish(self):
            return 0

        def abandon(self):
            pass

    timings = mp.run(tasks, read, lambda t, v: v, [Writer()], budget=100, readers=3, write_threads=3)
    assert peak[0] == 250 and timings.peak_inflight == 250  # the big one, alone
    small = [0]

    def read_small(task):  # the same without the big one: never above the budget
        v = read(task)
        small[0] = max(small[0], live[0])
        return v

    live[0] = 0
    tasks = [t for t in tasks if t.nbytes < 100]
    timings = mp.run(tasks, read_small, lambda t, v: v, [Writer()], budget=100, readers=3, write_threads=3)
    assert small[0] <= 100 and timings.peak_inflight <= 100 and live[0] == 0


def _catch(fn):
    try:
        return fn()
    except BaseException as exc:  # noqa: BLE001 - the test looks at it
        return exc


def _small_inputs(tmp_path, base_tensors: dict) -> tuple[Path, Path]:
    """(base, adapter) folders for train/merge.py run alone: the base's tensors with a Llama config.json, and
    an r=4 LoRA adapter on layer 0's up_proj (64 × 32, so base_tensors holds that weight)."""
    import torch
    from safetensors.torch import save_file
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir()
    adapter.mkdir()
    save_file(base_tensors, str(base / "model.safetensors"))
    (base / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "dtype": "float32"}))
    save_file({"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": torch.ones(4, 32),
               "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight": torch.ones(64, 4)},
              str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    return base, adapter


def test_merge_py_names_a_truncated_base_shard_and_leaves_no_output(tmp_path):
    import torch
    base, adapter = _small_inputs(tmp_path, {"model.layers.0.mlp.up_proj.weight": torch.ones(64, 32),
                                             "model.norm.weight": torch.ones(32)})
    data = (base / "model.safetensors").read_bytes()
    (base / "model.safetensors").write_bytes(data[:-200])  # the last tensor's bytes cut short
    res = subprocess.run([sys.executable, str(asset("train", "merge.py")), "--base", str(base), "--adapter",
                          str(adapter), "--out", str(tmp_path / "out"), "--device", "cpu"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    import re
    m = re.search(r"error: merge reader failed \((\S+)\): ValueError: \S+/model\.safetensors: (\S+) is truncated",
                  res.stderr)
    assert m and m[1] == m[2] == "model.layers.0.mlp.up_proj.weight", res.stderr  # safetensors puts it last
    assert not (tmp_path / "out").exists() and not list((tmp_path / "out.partial").glob("*.safetensors"))


SLOW_READS = """
import os, sys, time
if sys.argv and sys.argv[0].endswith("merge.py"):
    sys.path.insert(0, os.path.dirname(sys.argv[0]))
    from envdoctor_runner import merge_pipeline
    run = merge_pipeline.run

    def slow(tasks, read, *args, **kw):  # each tensor read takes a while: a big model on a slow disk
        print("merging", flush=True)
        return run(tasks, lambda task: (time.sleep(0.5), read(task))[1], *args, **kw)
    merge_pipeline.run = slow
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_merge_py_stopped_midway_ends_quietly_and_leaves_no_partial_output(tmp_path, signum):
    """Ctrl-C (envdoctor merge's, to the process group) or SIGTERM while tensors are being merged: exit
    128 + the signal, one line, no traceback, no `.partial` folder of model size left behind, and an
    earlier merge at --out untouched."""
    import torch
    base, adapter = _small_inputs(tmp_path, {f"model.layers.{i}.mlp.up_proj.weight": torch.ones(64, 32)
                                             for i in range(8)})
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_text("an earlier merge")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_READS)
    proc = subprocess.Popen([sys.executable, str(asset("train", "merge.py")), "--base", str(base), "--adapter",
                             str(adapter), "--out", str(out), "--device", "cpu", "--readers", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(site)})
    try:
        assert proc.stdout.readline().strip() == "merging"
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signum and "Traceback" not in stderr, stderr[-3000:]
    assert (out / "model.safetensors").read_text() == "an earlier merge"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "base", "out", "site"]


def test_a_stop_between_the_two_renames_of_publish_keeps_the_earlier_merge(tmp_path, monkeypatch):
    """`envdoctor merge --out` over an earlier merge: a Ctrl-C after the earlier one was moved aside and
    before the new one took its name gives the earlier merge its name back (never an empty name)."""
    from pathlib import Path

    from envdoctor.commands.merge import publish
    dest, stage = tmp_path / "merged", tmp_path / ".merged.partial"
    dest.mkdir()
    (dest / "model.safetensors").write_text("earlier")
    stage.mkdir()
    (stage / "model.safetensors").write_text("new")
    real = Path.rename

    def rename(self, target):
        if self == stage:
            raise KeyboardInterrupt  # the signal lands between the two renames
        return real(self, target)
    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        publish(stage, dest)
    monkeypatch.undo()
    assert (dest / "model.safetensors").read_text() == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".merged.partial", "merged"]
    publish(stage, dest)
    assert (dest / "model.safetensors").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


# -- a base with tied embeddings (Llama-3.2-1B/3B): modules_to_save copies untie them ------------------------

def _tied_run(tmp_path, modules_to_save, tied=True):
    """A run folder (run_summary.json, adapter, heldout.json) of a tiny Llama whose embeddings are tied, with a
    real peft adapter: LoRA on q/v and the named modules_to_save copies, all moved off their initial values."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=tied)
    run = tmp_path / "run"
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(run / "base")
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            modules_to_save=modules_to_save))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:  # as training would: B off zero, copies changed
                p.add_(torch.randn_like(p) * 0.1)
    peft.save_pretrained(run / "adapter")
    g = torch.Generator().manual_seed(1)
    (run / "heldout.json").write_text(json.dumps({"chunks": [torch.randint(0, 96, (24,), generator=g).tolist()
                                                             for _ in range(3)]}))
    (run / "run_summary.json").write_text(json.dumps({"base_model_path": str(run / "base")}))
    return run


@pytest.mark.parametrize("modules", [["embed_tokens", "lm_head"], ["lm_head"], ["embed_tokens"]])
def test_a_tied_base_with_trained_embedding_or_head_copies_merges_untied(tmp_path, modules):
    """peft 0.21 trains a separate copy of each module named on a tied base (the one not named keeps the frozen
    tied original): the merged model carries its own lm_head.weight, says tie_word_embeddings: false, and
    gives base + adapter's logits."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    run = _tied_run(tmp_path, modules)
    res = envdoctor("merge", str(run), "--python", sys.executable, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    merged = run / "merged"
    assert json.loads((merged / "config.json").read_text())["tie_word_embeddings"] is False
    assert "lm_head untied from the embedding: tie_word_embeddings: false" in res.stdout
    assert json.loads((merged / "verify_report.json").read_text())["passed"]
    weights = json.loads((merged / "model.safetensors.index.json").read_text())["weight_map"]
    assert "lm_head.weight" in weights and "model.embed_tokens.weight" in weights
    ids = torch.tensor([json.loads((run / "heldout.json").read_text())["chunks"][0]])
    with torch.no_grad():
        ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(run / "base"), run / "adapter").eval()
        want, base_logits = ref(input_ids=ids).logits, None
        with ref.disable_adapter():
            base_logits = ref(input_ids=ids).logits
        model = AutoModelForCausalLM.from_pretrained(merged).eval()
        got = model(input_ids=ids).logits
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert (want - base_logits).abs().max() > 0.05  # the copies changed the model: the comparison means something
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_an_untied_base_stays_untied_and_stray_tensors_are_still_refused(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file
    run = _tied_run(tmp_path, ["embed_tokens", "lm_head"], tied=False)
    res = envdoctor("merge", str(run), "--python", sys.executable, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert json.loads((run / "merged" / "config.json").read_text())["tie_word_embeddings"] is False
    assert json.loads((run / "merged" / "merge_report.json").read_text())["replaced"] == \
        ["lm_head.weight", "model.embed_tokens.weight"]
    assert "lm_head untied" not in res.stdout and json.loads((run / "merged" / "merge_report.json").read_text())[
        "untied_lm_head"] is False
    # a tied base: an adapter tensor other than the head copy that matches nothing is refused as before
    tied = _tied_run(tmp_path / "t", ["embed_tokens", "lm_head"])
    path = tied / "adapter" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    tensors["base_model.model.model.vision_tower.weight"] = torch.ones(2, 2)
    save_file(tensors, str(path))
    res = subprocess.run([sys.executable, str(asset("train", "merge.py")), "--base", str(tied / "base"), "--adapter",
                          str(tied / "adapter"), "--out", str(tmp_path / "out"), "--device", "cpu"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "1 adapter tensors match no base weight" in res.stderr, res.stderr[-2000:]
    assert "vision_tower" in res.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_merge_py_names_a_base_config_it_cannot_read(tmp_path, text):
    import torch
    base, adapter = _small_inputs(tmp_path, {"model.layers.0.mlp.up_proj.weight": torch.ones(64, 32)})
    (base / "config.json").write_text(text)
    res = subprocess.run([sys.executable, str(asset("train", "merge.py")), "--base", str(base), "--adapter",
                          str(adapter), "--out", str(tmp_path / "out"), "--device", "cpu"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert f"error: {base / 'config.json'}: cannot read the base's config" in res.stderr
    assert not (tmp_path / "out").exists()
