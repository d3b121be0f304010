"""Training configs: every shipped config loads (the schema's own tests are in test_train_schema.py)."""

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
