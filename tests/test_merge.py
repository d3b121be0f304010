"""`envdoctor merge`, `check --model` and `eval` for real on the CPU: a demo run merged and verified, a
second merge that does nothing, a model folder judged, the merged model closer to its corpus than its
base, and the tensor-by-tensor merge holding far less memory than the model it writes."""

import json
import os
import subprocess
import sys

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
