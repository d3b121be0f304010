"""One training-config schema: axolotl's defaults, every key resolved, the runner and the estimator
reading the same resolved file, and no key read in train/ that the schema does not define."""

import json
import re
import sys
import textwrap

import pytest
import yaml

from envdoctor.assets import asset
from envdoctor.training import config as C
from envdoctor.training.estimate import GiB, Shape, estimate

MINIMAL = {"base_model": "meta-llama/Llama-3.1-8B", "datasets": [{"path": "corpus"}], "adapter": "lora",
           "lora_r": 64, "lora_alpha": 128, "lora_target_modules": ["q_proj", "v_proj"], "learning_rate": 1e-4}
LLAMA8B = Shape(4096, 14336, 32, 32, 8, 128256)


def write(tmp_path, data, name="run.yaml"):
    (tmp_path / "corpus").mkdir(exist_ok=True)
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_a_key_left_out_means_what_it_means_in_axolotl(tmp_path):
    cfg = C.load(write(tmp_path, MINIMAL))
    assert cfg.errors == [] and cfg.warnings == []
    r = cfg.resolved()
    assert set(r) == {k.name for k in C.SCHEMA} | set(C.RESOLVED_EXTRA)
    # axolotl's documented defaults (utils/schemas/config.py, training.py, peft.py)
    assert (r["load_in_4bit"], r["gradient_checkpointing"], r["sample_packing"]) == (False, False, False)
    assert (r["micro_batch_size"], r["gradient_accumulation_steps"], r["num_epochs"]) == (1, 1, 1)
    assert (r["sequence_len"], r["val_set_size"], r["bf16"]) == (512, 0.0, "auto")
    assert (r["optimizer"], r["lr_scheduler"], r["weight_decay"], r["lora_dropout"]) == \
        ("adamw_torch_fused", "cosine", 0.0, 0.0)
    assert r["chunk_overlap"] == 64 and r["lora_modules_to_save"] == [] and r["warmup_steps"] is None
    assert r["datasets"][0]["path"] == str(tmp_path / "corpus")  # relative to the config file


def test_the_estimate_is_of_the_config_the_runner_runs(tmp_path):
    """The outside testers' case: no load_in_4bit / gradient_checkpointing keys. axolotl (and the runner)
    then train a bf16 base without checkpointing; the estimate must be of that, not of 4-bit + ckpt."""
    r = C.load(write(tmp_path, dict(MINIMAL, sequence_len=2048, micro_batch_size=2))).resolved()
    plain = estimate(LLAMA8B, r).peak / GiB
    qlora = estimate(LLAMA8B, dict(r, load_in_4bit=True, gradient_checkpointing=True)).peak / GiB
    assert plain > 40 and qlora < 15, (plain, qlora)
    assert "base (bf16 linears)" in estimate(LLAMA8B, r).parts


def test_unknown_keys_are_warnings_and_never_reach_the_runner(tmp_path):
    cfg = C.load(write(tmp_path, dict(MINIMAL, hub_token="hf_secretsecret", wandb_api_key="0123456789abcdef")))
    assert cfg.errors == [] and len(cfg.warnings) == 2 and "hub_token: unknown key" in cfg.warnings[0]
    assert "secret" not in json.dumps(cfg.resolved()) and "0123456789" not in json.dumps(cfg.resolved())


@pytest.mark.parametrize("key,value,expected", [
    ("micro_batch_size", int("9" * 400), "micro_batch_size: expected a value from 1 to 65536"),
    ("micro_batch_size", "1.0e+29", "micro_batch_size: expected an integer, got '1.0e+29'"),
    ("learning_rate", float("nan"), "learning_rate: expected a number, got nan"),
    ("learning_rate", 3, "learning_rate: expected a value from 1e-12 to 1, got 3"),
    ("bf16", "yes", "bf16: expected one of true, false, auto, got 'yes'"),
    ("load_in_4bit", "yes", "load_in_4bit: expected true/false, got 'yes'"),
    ("adapter", "qlora", "adapter: qlora needs load_in_4bit: true"),
    ("chunk_overlap", 600, "chunk_overlap: expected less than sequence_len (512), got 600"),
    ("lora_target_modules", [1, 2], "lora_target_modules: expected a list of module names"),
])
def test_bad_values_are_named_with_their_key(tmp_path, key, value, expected):
    p = tmp_path / "run.yaml"
    (tmp_path / "corpus").mkdir()
    p.write_text(yaml.safe_dump(dict(MINIMAL, **{key: value})))
    errors = C.load(p).errors
    assert any(expected in e for e in errors), errors


def test_an_invalid_config_reports_every_error_at_once(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(textwrap.dedent("""\
        base_model: meta-llama/Llama-3.1-8B
        datasets: [{path: nowhere}]
        sequence_len: -5
        lora_r: sixty-four
        lora_alpha: 128
        learning_rate: 3
        optimizer: sgd_please
        mystery_knob: 1
        """))
    errors = C.load(p).errors
    assert [e.split(": ")[1] for e in errors] == ["sequence_len", "lora_r", "learning_rate", "optimizer", "adapter",
                                                   "lora_target_modules", "datasets[0].path"]
    assert all(e.startswith(f"{p}: ") for e in errors)


def test_a_binary_config_is_an_error_not_a_traceback(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_bytes(b"base_model: \xff\xfe\x00\x01 llama\n")
    assert C.load(p).errors == [f"{p}: not UTF-8 text (byte 12: b'\\xff'): a training config is a YAML file"]


KEY_READ = re.compile(r"\bcfg(?:\[\s*[\"'](\w+)[\"']\s*\]|\.get\(\s*[\"'](\w+)[\"'])")


def _keys_read(source: str) -> set[str]:
    return {a or b for a, b in KEY_READ.findall(source)}


def test_every_config_key_read_in_train_is_defined_by_the_schema():
    files = sorted(asset("train").rglob("*.py"))
    read = {f.name: _keys_read(f.read_text()) for f in files}
    assert read["qlora.py"] >= {"seed", "micro_batch_size", "gradient_accumulation_steps"}  # the scan sees them
    assert read["modeling.py"] >= {"load_in_4bit", "bf16", "gradient_checkpointing", "optimizer"}
    known = {k.name for k in C.SCHEMA} | set(C.RESOLVED_EXTRA)
    unknown = {f: sorted(keys - known) for f, keys in read.items() if keys - known}
    assert unknown == {}
    defaults = {f.name: re.findall(r"\bcfg\.get\(", f.read_text()) for f in files}
    assert {f: n for f, n in defaults.items() if n} == {}, "the runner must not carry defaults of its own"


def test_the_runner_reads_the_schema_version_envdoctor_writes(tmp_path):
    sys.path.insert(0, str(asset("train")))
    try:
        from envdoctor_runner import config as runner_config
    finally:
        sys.path.remove(str(asset("train")))
    assert runner_config.SCHEMA_VERSION == C.SCHEMA_VERSION
    p = tmp_path / "config.resolved.json"
    p.write_text(json.dumps(C.load(write(tmp_path, MINIMAL)).resolved()))
    cfg = runner_config.load(p)
    assert cfg["lora_r"] == 64
    with pytest.raises(SystemExit, match=r"key 'no_such_key' is missing"):
        cfg["no_such_key"]
    p.write_text(json.dumps({"lora_r": 8}))
    with pytest.raises(SystemExit, match="schema_version None"):
        runner_config.load(p)


def test_the_docs_table_is_the_schema():
    from pathlib import Path
    doc = (Path(__file__).resolve().parent.parent / "docs" / "training-config.md").read_text()
    assert doc.endswith(C.schema_markdown()), "regenerate docs/training-config.md from training.config.schema_markdown()"


def test_checks_of_an_invalid_config_do_not_crash(tmp_path):
    """config.valid reports the bad key; the others skip or judge what they can (no crash result)."""
    import subprocess
    p = write(tmp_path, dict(MINIMAL, sequence_len="many", micro_batch_size=[2]))
    res = subprocess.run([sys.executable, "-m", "envdoctor", "check", "--config", str(p), "--only", "config", "--json",
                          "--python", sys.executable], capture_output=True, text=True, timeout=300)
    results = {r["id"]: r for r in json.loads(res.stdout)["results"]}
    assert results["config.valid"]["status"] == "fail"
    assert [i for i, r in results.items() if r["status"] == "error"] == [], results


def test_yaml_1_1_exponents_are_numbers_and_typos_get_a_suggestion(tmp_path):
    p = tmp_path / "run.yaml"
    (tmp_path / "corpus").mkdir()
    p.write_text(yaml.safe_dump(MINIMAL).replace("learning_rate: 0.0001", "learning_rate: 3e-4") + "num_epoch: 3\n")
    cfg = C.load(p)
    assert cfg.errors == [] and cfg.resolved()["learning_rate"] == 3e-4
    assert cfg.warnings == [f"{p}: num_epoch: unknown key, ignored (not passed to the runner); did you mean num_epochs?"]


def test_warmup_twice_and_a_hub_dataset_id_are_named(tmp_path):
    errors = C.load(write(tmp_path, dict(MINIMAL, warmup_steps=10, warmup_ratio=0.1,
                                         datasets=[{"path": "tatsu-lab/alpaca", "type": "alpaca"}]))).errors
    assert any("warmup_steps: set warmup_steps or warmup_ratio, not both" in e for e in errors)
    assert any("a Hugging Face dataset id is not read by the runner" in e and "hf download tatsu-lab/alpaca" in e
               for e in errors)


def test_resume_refuses_a_config_its_checkpoints_were_not_trained_with(tmp_path):
    """Checked before config.resolved.json is rewritten: the folder keeps the record of its checkpoints."""
    import subprocess
    demo = yaml.safe_load(asset("train", "configs", "demo.yaml").read_text())
    demo.update(datasets=[{"path": str(asset("train", "demo_corpus"))}], output_dir=str(tmp_path / "run"))
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(dict(demo, lora_r=8)))
    (tmp_path / "run").mkdir()
    before = json.dumps(C.load(config).resolved())
    (tmp_path / "run" / "config.resolved.json").write_text(before)
    config.write_text(yaml.safe_dump(dict(demo, lora_r=16, num_epochs=9)))
    res = subprocess.run([sys.executable, "-m", "envdoctor", "train", str(config), "--resume", "--dry-run",
                          "--python", sys.executable], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "other values of lora_r (see its config.resolved.json)" in res.stdout, res.stdout
    assert (tmp_path / "run" / "config.resolved.json").read_text() == before


def test_a_resolved_config_is_itself_a_valid_config(tmp_path):
    """config.resolved.json loaded again (JSON is YAML) gives no error and resolves to itself."""
    for source in (asset("train", "configs", "demo.yaml"), write(tmp_path, dict(MINIMAL, warmup_steps=10))):
        resolved = C.load(source).resolved()
        again = tmp_path / "config.resolved.json"
        again.write_text(json.dumps(resolved))
        cfg = C.load(again)
        assert cfg.errors == [] and cfg.warnings == [], cfg.errors + cfg.warnings
        assert {k: v for k, v in cfg.resolved().items() if k not in ("config_dir", "config_path")} == \
            {k: v for k, v in resolved.items() if k not in ("config_dir", "config_path")}
