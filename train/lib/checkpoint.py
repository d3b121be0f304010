"""Checkpoints written atomically (a staging folder, then a rename), and found again for --resume."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch


def save(out: Path, name: str, model, optimizer, scheduler, state: dict) -> Path:
    final = out / "checkpoints" / name
    tmp = out / "checkpoints" / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)  # the adapter (and modules_to_save), not the base
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": {"python": random.getstate(), "torch": torch.get_rng_state()}}, tmp / "trainer.pt")
    (tmp / "state.json").write_text(json.dumps(state))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    (out / "checkpoints" / "latest").write_text(name)
    return final


def latest(out: Path) -> Path | None:
    pointer = out / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = out / "checkpoints" / pointer.read_text().strip()
    return path if (path / "state.json").exists() else None


def restore(path: Path, model, optimizer, scheduler) -> dict:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors"))
    blob = torch.load(path / "trainer.pt", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    random.setstate(blob["rng"]["python"])
    torch.set_rng_state(blob["rng"]["torch"])
    return json.loads((path / "state.json").read_text())
