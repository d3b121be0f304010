"""FSDP over a 4-bit base (QLoRA sharded over processes), for real on the CPU: bitsandbytes 4-bit runs here.

Why the runner's own Shardable4bitLinear and not bitsandbytes' Linear4bit under FSDP2: the second test shows
fully_shard losing Params4bit's quantisation state; the layer itself equals Linear4bit bit for bit (first).
The end-to-end test: 2 gloo processes with --fsdp give one process's losses, resume mid-run, and write an
adapter that peft loads and `envdoctor merge` merges and verifies."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from envdoctor.assets import asset

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")
RUNNER = Path(asset("train", "qlora.py")).parent
sys.path.insert(0, str(RUNNER))
ENV = {**os.environ, "NO_COLOR": "1"}
ENV.pop("VIRTUAL_ENV", None)
CFG = {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}


def _bnb_layer(w, double_quant: bool):
    from envdoctor_runner.modeling import _linear4bit
    layer = _linear4bit(w.shape[1], w.shape[0], False, torch.float32, dict(CFG, bnb_4bit_use_double_quant=double_quant))
    layer.weight = bnb.nn.Params4bit(w.clone(), requires_grad=False, quant_type="nf4", compress_statistics=double_quant)
    return layer.to("cpu")


@pytest.mark.parametrize("double_quant", [True, False])
@pytest.mark.parametrize("shape", [(344, 128), (3, 66)])  # (3, 66): 99 packed bytes, padded to whole floats
def test_shardable_layer_equals_bitsandbytes_linear4bit(shape, double_quant):
    from envdoctor_runner.shardable4bit import Shardable4bitLinear
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(*shape, generator=gen) * 0.02
    ref = _bnb_layer(w, double_quant)
    mine = Shardable4bitLinear.quantize(w.clone(), None, dict(CFG, bnb_4bit_use_double_quant=double_quant),
                                        torch.float32, torch.float32)
    assert mine.packed.dtype == torch.float32 and not mine.packed.requires_grad  # a floating tensor FSDP shards
    x = torch.randn(2, 5, shape[1], generator=gen, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    a, b = ref(x), mine(x2)
    a.square().sum().backward()
    b.square().sum().backward()
    assert torch.equal(a, b) and torch.equal(x.grad, x2.grad)
    ref.eval(), mine.eval()
    with torch.no_grad():
        assert torch.equal(ref(x), mine(x))


EVIDENCE = r"""
import os, sys, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[1])
import bitsandbytes as bnb
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from envdoctor_runner.modeling import _linear4bit
from envdoctor_runner.shardable4bit import Shardable4bitLinear
dist.init_process_group("gloo")
mesh = init_device_mesh("cpu", (2,))
cfg = {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}
gen = torch.Generator().manual_seed(0)
w, x = torch.randn(344, 128, generator=gen) * 0.02, torch.randn(3, 5, 128, generator=gen)
def params4bit():
    layer = _linear4bit(128, 344, False, torch.float32, cfg)
    layer.weight = bnb.nn.Params4bit(w.clone(), requires_grad=False, quant_type="nf4", compress_statistics=True)
    return layer.to("cpu")
shardable = lambda: Shardable4bitLinear.quantize(w.clone(), None, cfg, torch.float32, torch.float32)
for name, make in (("Params4bit", params4bit), ("Shardable4bitLinear", shardable)):
    ref = make()(x).detach()
    wrapped = torch.nn.Sequential(make())
    fully_shard(wrapped[0], mesh=mesh)
    fully_shard(wrapped, mesh=mesh)
    try:
        result = "max_abs_diff=%g" % float((wrapped(x) - ref).abs().max())
    except Exception as exc:
        result = "%s: %s" % (type(exc).__name__, str(exc).splitlines()[0])
    if dist.get_rank() == 0:
        print(name, result, flush=True)
dist.barrier()
sys.stdout.flush()
os._exit(0)
"""


@pytest.mark.slow
def test_fsdp2_loses_params4bit_quant_state_but_not_the_shardable_layers(tmp_path):
    script = tmp_path / "evidence.py"
    script.write_text(EVIDENCE)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(script), str(RUNNER)], capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=300)
    lines = [line for line in res.stdout.splitlines() if line.startswith(("Params4bit", "Shardable4bitLinear"))]
    assert res.returncode == 0 and len(lines) == 2, res.stdout[-2000:] + res.stderr[-2000:]
    # bitsandbytes 0.50.2: the gathered Params4bit has no quant_state ("ValueError: quant_state is required")
    assert not lines[0].startswith("Params4bit max_abs_diff=0"), lines
    assert lines[1] == "Shardable4bitLinear max_abs_diff=0", lines


def train(*args, cwd):
    return subprocess.run([sys.executable, "-m", "envdoctor", "train", "--python", sys.executable, *args],
                          capture_output=True, text=True, cwd=cwd, env=ENV, timeout=900)


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.slow
def test_fsdp_4bit_two_processes_match_one_process_resume_and_merge(tmp_path):
    """The demo (NF4, double quantisation, LoRA on every projection, embed_tokens and lm_head trained whole):
    one process without FSDP, then 2 gloo processes with --fsdp: the losses agree within 1e-4 relative
    (measured: identical; the 4-bit path adds no tolerance: both dequantize the same bytes). Then the FSDP
    run resumes from its mid-epoch checkpoint and logs the uninterrupted run's losses; its gathered adapter
    loads with peft and `envdoctor merge` merges and verifies it."""
    cfg = yaml.safe_load(asset("train", "configs", "demo.yaml").read_text())
    cfg.update(num_epochs=2, gradient_accumulation_steps=2, save_steps=2,
               datasets=[{"path": str(asset("train", "demo_corpus"))}])
    runs = {}
    for n, extra in ((1, []), (2, ["--fsdp"])):
        config = tmp_path / f"demo{n}.yaml"
        config.write_text(yaml.safe_dump(dict(cfg, output_dir=str(tmp_path / f"run{n}"))))
        res = train(str(config), "--nproc", str(n), *extra, cwd=tmp_path)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert "linear layers quantized to NF4" in res.stdout  # 4-bit for real, not the plain-LoRA fallback
        runs[n] = tmp_path / f"run{n}"
    assert "sharded over 2 process(es) (FSDP)" in res.stdout
    one, two = losses(runs[1]), losses(runs[2])
    assert len(one) == len(two) == 8
    for a, b in zip(one, two):
        assert abs(a - b) <= 1e-4 * abs(a), (one, two)
    summary = json.loads((runs[2] / "run_summary.json").read_text())
    assert summary["world_size"] == 2 and len(summary["peak_host_rss_gib_per_rank"]) == 2
    assert all(0 < g < 64 for g in summary["peak_host_rss_gib_per_rank"])

    # resume from the mid-epoch checkpoint of epoch 2 (step 6, 4 steps an epoch), as if stopped after step 7
    checkpoints = runs[2] / "checkpoints"
    (checkpoints / "latest").write_text("step-6")
    shutil.rmtree(checkpoints / "epoch-2")
    res = train(str(tmp_path / "demo2.yaml"), "--nproc", "2", "--fsdp", "--resume", cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resumed from step-6: epoch 2, batch 4" in res.stdout
    assert losses(runs[2]) == two

    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    adapter = runs[2] / "adapter"
    a, b = load_file(str(runs[1] / "adapter" / "adapter_model.safetensors")), load_file(str(adapter / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5) for k in a)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(runs[2] / "base")), str(adapter))
    assert any("lora_A" in k for k in model.state_dict())
    res = subprocess.run([sys.executable, "-m", "envdoctor", "merge", str(runs[2]), "--python", sys.executable],
                         capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=600)
    assert res.returncode == 0 and '"passed": true' in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]


@pytest.mark.slow
def test_fsdp_4bit_pretrained_folder_is_read_a_layer_at_a_time_and_two_processes_match_one(tmp_path):
    """A pretrained base (here: a float base the demo wrote). Without FSDP, from_pretrained + BitsAndBytesConfig
    loads it whole (bitsandbytes Linear4bit layers); under --fsdp its safetensors are read a tensor at a time,
    each decoder layer quantised to Shardable4bitLinear and sharded as it is built. The first step's loss
    (LoRA B is zero: the base's own loss) is the same: the same 4-bit weights; then 1 and 2 FSDP processes log
    the same losses (their LoRA A is drawn per layer, not from peft's global generator, so only the first
    step is compared with the run without FSDP)."""
    cfg = yaml.safe_load(asset("train", "configs", "demo.yaml").read_text())
    cfg.update(num_epochs=1, gradient_accumulation_steps=2, datasets=[{"path": str(asset("train", "demo_corpus"))}],
               output_dir=str(tmp_path / "demo"))
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(cfg))
    res = train(str(tmp_path / "demo.yaml"), cwd=tmp_path)  # writes the float base of its random model
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    del cfg["model_config"], cfg["tokenizer"]
    base = tmp_path / "base"
    shutil.move(str(tmp_path / "demo" / "base"), str(base))
    cfg.update(base_model=str(base), lora_modules_to_save=[])
    runs = {}
    for name, n, extra in (("plain", 1, []), ("fsdp1", 1, ["--fsdp"]), ("fsdp2", 2, ["--fsdp"])):
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump(dict(cfg, output_dir=str(tmp_path / name))))
        res = train(str(config), "--nproc", str(n), *extra, cwd=tmp_path)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert "4-bit is not available" not in res.stdout
        assert (f"read from {base} one decoder layer at a time" in res.stdout) == bool(extra), res.stdout[-2000:]
        runs[name] = losses(tmp_path / name)
    assert len(runs["plain"]) == len(runs["fsdp1"]) == len(runs["fsdp2"]) == 4
    assert abs(runs["plain"][0] - runs["fsdp2"][0]) <= 1e-5 * runs["plain"][0], runs
    for a, b in zip(runs["fsdp1"], runs["fsdp2"]):
        assert abs(a - b) <= 1e-4 * abs(a), runs
    summary = json.loads((tmp_path / "fsdp2" / "run_summary.json").read_text())
    assert len(summary["peak_loaded_weight_bytes_per_rank"]) == 2


@pytest.mark.slow
def test_fsdp_4bit_loading_holds_a_shard_per_process_not_the_whole_model(tmp_path):
    """No process holds the whole model while it loads: each decoder layer is sharded as soon as it is built.
    The runner counts the weight bytes a process held at most (exact, from the tensors; RSS is noisy); with
    2 processes that is half the 4-bit model plus the one float piece being built and the unsharded root
    (final norm, lm_head), where one process holds the whole model. 24 layers, so that one float layer is
    small beside the 4-bit model (measured: see docs/training.md, "Loading")."""
    cfg = yaml.safe_load(asset("train", "configs", "demo.yaml").read_text())
    cfg["model_config"].update(hidden_size=256, intermediate_size=512, num_hidden_layers=24, num_attention_heads=4,
                               num_key_value_heads=4)
    # one short file: 4-bit matmuls are slow on a CPU, and what is measured here is the loading
    cfg.update(num_epochs=1, micro_batch_size=4, gradient_accumulation_steps=1, sequence_len=32, val_set_size=0,
               lora_r=4, lora_modules_to_save=[],
               datasets=[{"path": str(asset("train", "demo_corpus", "harbour-notes.txt"))}])
    summaries = {}
    for n in (1, 2):
        config = tmp_path / f"load{n}.yaml"
        config.write_text(yaml.safe_dump(dict(cfg, output_dir=str(tmp_path / f"load{n}"))))
        res = train(str(config), "--nproc", str(n), "--fsdp", cwd=tmp_path)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert "each sharded as it was built" in res.stdout
        summaries[n] = json.loads((tmp_path / f"load{n}" / "run_summary.json").read_text())
    one, two = summaries[1], summaries[2]
    sizes = one["loaded_weight_bytes"]
    assert sizes == two["loaded_weight_bytes"]  # the same model, whatever the number of processes
    whole, piece, root = sizes["whole_model"], sizes["largest_piece"], sizes["root"]
    assert piece < whole / 2  # weights dominate: the test would prove nothing otherwise
    [peak1] = one["peak_loaded_weight_bytes_per_rank"]
    assert peak1 >= whole  # one process: the whole model at the end of loading
    for peak in two["peak_loaded_weight_bytes_per_rank"]:
        # half of what is sharded (plus FSDP's padding to whole rows: a few bytes a tensor), the float piece in
        # flight, the root whole
        assert peak <= (whole - root) / 2 * 1.01 + piece + root, (peak, sizes)
        assert peak < 0.75 * peak1, (peak, peak1)
    print("loading:", sizes, "peak bytes 1 process", peak1, "2 processes", two["peak_loaded_weight_bytes_per_rank"],
          "peak RSS GiB", one["peak_host_rss_gib_per_rank"], two["peak_host_rss_gib_per_rank"])
