"""The memory estimator: exact parameter arithmetic, the H200 calibration held out, the config doctor."""

import dataclasses
import json

import pytest
from pathlib import Path

import yaml
from gpufake import gpu_box, nvml, RTX5090
from fakes import GiB

from envdoctor.assets import asset
from envdoctor.checks.train_config import memory, valid
from envdoctor.context import Context
from envdoctor.facts.gpu import GpuFacts, probe_gpu
from envdoctor.facts.train_config import probe_train_config
from envdoctor.model import Status
from envdoctor.system import System
from envdoctor.training.config import load
from envdoctor.training.estimate import Shape, estimate

LLAMA8B = Shape(4096, 14336, 32, 32, 8, 128256)
SEED = load(asset("train", "configs", "qlora_style_transfer.yaml")).resolved()  # every default filled
RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"
CALIBRATION = RESULTS / "h200-llama8b-calibration.json"


def test_parameter_arithmetic_matches_domain_facts():
    e = estimate(LLAMA8B, SEED)
    assert e.lora_params == 167_772_160 and e.save_params == 1_050_673_152
    assert round(e.lora_params * 2 / 1e6) == 336 and round(e.lora_params * 4 / 1e6) == 671


@pytest.mark.parametrize("engine,results", [("peft", "h200-llama8b-calibration.json"),
                                            ("runner", "h200-llama8b-calibration-runner.json")])
def test_held_out_h200_points_within_ten_percent(engine, results):
    """Peak memory measured on an H200 at points the constants were not fitted on: the plain peft loop
    (what axolotl does) and envdoctor's runner."""
    rows = json.loads((RESULTS / results).read_text())["rows"]
    held_out = [r for r in rows if r["role"] == "check"]
    assert len(held_out) >= 4
    for r in held_out:
        cfg = dict(SEED, sequence_len=r["seq"], micro_batch_size=r["micro"],
                   gradient_checkpointing=r["gradient_checkpointing"],
                   lora_modules_to_save=["embed_tokens", "lm_head"] if r["modules_to_save"] else [])
        est = estimate(LLAMA8B, cfg, engine=engine).peak / GiB
        assert abs(est / r["measured_gib"] - 1) < 0.10, (r, est)


def test_the_runner_needs_less_than_the_plain_loop():
    """No fp32 copy of the 128k embeddings and a chunked loss: the estimator knows what the runner saves."""
    plain, runner = (estimate(LLAMA8B, dict(SEED, lora_modules_to_save=[]), engine=e) for e in ("peft", "runner"))
    assert runner.parts["embeddings + lm_head (bf16)"] * 2 == plain.parts["embeddings + lm_head (fp32)"]
    assert runner.peak < 0.6 * plain.peak


def config_facts(tmp_path, **overrides):
    data = dict(SEED, datasets=[{"path": "."}], **overrides)
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(data))
    system = System(env={"HOME": str(tmp_path), "HF_HUB_CACHE": str(tmp_path / "hub")})
    return probe_train_config(system, Context("/x", "t", train_config=str(p)))


def test_config_doctor_fits_a_32gb_card_and_not_a_16gb_one(tmp_path):
    facts = config_facts(tmp_path)
    assert valid(facts).status == Status.OK and facts.model_from == "envdoctor's table of known shapes"
    system, _ = gpu_box(tmp_path / "m", nvml("570.124.06", 12080, RTX5090))
    r = memory(facts, probe_gpu(system, Context("/x", "t")))
    assert r.status == Status.OK and "estimated peak 18.3 GiB of 31.0 GiB free" in r.message
    assert any(d.startswith("modules_to_save costs") for d in r.details)
    small = dict(RTX5090, name="16 GB card", mem_total=16 * GiB, mem_free=15 * GiB)
    system, _ = gpu_box(tmp_path / "s", nvml("570.124.06", 12080, small))
    r = memory(facts, probe_gpu(system, Context("/x", "t")))
    assert r.status == Status.FAIL and "lora_modules_to_save: [] (only needed for new tokens) → 9.0 GiB" in r.remedy.text
    plain = memory(dataclasses.replace(facts, engine="peft"), probe_gpu(system, Context("/x", "t")))
    assert "lora_modules_to_save: [] (only needed for new tokens) + micro_batch_size: 1" in plain.remedy.text


def test_model_shape_from_the_hf_cache(tmp_path):
    snap = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps({"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
                                                  "num_attention_heads": 4, "vocab_size": 1000}))
    facts = config_facts(tmp_path, base_model="acme/tiny")
    assert facts.model_from.endswith("snapshots/abc/config.json")
    assert memory(facts, GpuFacts(None)).status == Status.OK


def test_train_preflight_refuses_a_config_that_does_not_fit(tmp_path):
    """envdoctor train runs config.memory in its preflight: a 16 GB GPU and the seed's config → refused."""
    import io
    import sys

    from gpufake import RTX5090 as CARD
    from envdoctor.commands.train import run_train
    from envdoctor.system import System as Real

    data = dict(SEED, datasets=[{"path": "."}], output_dir=str(tmp_path / "out"))
    config = tmp_path / "seed.yaml"
    config.write_text(yaml.safe_dump(data))
    small = dict(CARD, name="16 GB card", mem_total=16 * GiB, mem_free=15 * GiB)
    real = Real()
    system, _ = gpu_box(tmp_path / "m", nvml("570.124.06", 12080, small),
                        commands={sys.executable: lambda argv, timeout: real.run(argv, timeout)})

    from types import SimpleNamespace
    Args = SimpleNamespace(demo=False, config=str(config), force=False, resume=False, dry_run=True, output_dir=None,
                           backend="runner", nproc=None, fsdp=False)
    out = io.StringIO()
    code = run_train(Args, system, Context(sys.executable, "test"), out)
    text = out.getvalue()
    assert code == 1 and "refusing to start a run that cannot work" in text
    assert "[✗] config.memory: estimated peak 18.3 GiB, but the GPU has 15.0 GiB free" in text
    assert not (tmp_path / "out" / "config.resolved.json").exists()
