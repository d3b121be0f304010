"""Training configs: every shipped config loads; an invalid one yields all its errors at once."""

import textwrap

from envdoctor.assets import asset
from envdoctor.training.config import load


def test_shipped_configs_load():
    configs = sorted(asset("train", "configs").glob("*.yaml"))
    assert {p.name for p in configs} >= {"demo.yaml", "qlora_style_transfer.yaml"}
    for p in configs:
        cfg = load(p)
        missing_corpus = [e for e in cfg.errors if "datasets[0].path" in e]
        # The seed's config points at the user's own ./corpus, which the repo does not ship.
        assert [e for e in cfg.errors if e not in missing_corpus] == [] and cfg.warnings == [], (p, cfg.errors)
    seed = load(asset("train", "configs", "qlora_style_transfer.yaml")).data
    assert seed["lora_r"] == 64 and seed["optimizer"] == "paged_adamw_8bit" and seed["lora_modules_to_save"]


def test_invalid_config_reports_every_error(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(textwrap.dedent("""\
        base_model: meta-llama/Llama-3.1-8B
        datasets: [{path: nowhere}]
        sequence_len: -5
        lora_r: sixty-four
        lora_alpha: 128
        lora_target_modules: [q_proj]
        learning_rate: 3
        num_epochs: 5
        optimizer: sgd_please
        load_in_4bit: "yes"
        mystery_knob: 1
        """))
    cfg = load(p)
    assert cfg.errors == [
        f"{p}: output_dir: required",
        f"{p}: micro_batch_size: required",
        f"{p}: lora_r: expected int, got 'sixty-four'",
        f"{p}: optimizer: expected one of adamw_8bit, adamw_bnb_8bit, adamw_torch, paged_adamw_8bit, got 'sgd_please'",
        f"{p}: load_in_4bit: expected bool, got 'yes'",
        f"{p}: sequence_len: expected a positive number, got -5",
        f"{p}: learning_rate: expected between 0 and 1, got 3",
        f"{p}: datasets[0].path: nowhere does not exist (relative to {tmp_path})",
    ]
    assert cfg.warnings == [f"{p}: mystery_knob: unknown key, ignored"]
