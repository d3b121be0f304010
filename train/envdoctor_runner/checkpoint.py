"""Checkpoints written atomically (atomic.staged: a staging folder, fsync, then a rename), and found again for --resume.

Under FSDP the adapter and the optimizer state are sharded: every process takes part in gathering them
(collectives), rank 0 writes. Otherwise rank 0 alone saves (the caller only calls it there)."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch

from envdoctor_runner import atomic


def _full_state(module, optimizer):
    """(trainable weights, optimizer state), gathered whole on the CPU from an FSDP-sharded module."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    weights = get_model_state_dict(module, options=opts)
    return ({k.removeprefix("peft_model."): v for k, v in weights.items()},
            get_optimizer_state_dict(module, optimizer, options=opts) if optimizer is not None else None)


def write_adapter(folder: Path, model, weights: dict | None) -> None:
    """The adapter (and modules_to_save), not the base: peft's own files, from gathered weights under FSDP."""
    if weights is None:
        model.save_pretrained(folder)
        return
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(model, state_dict=weights).items()},
              folder / "adapter_model.safetensors", metadata={"format": "pt"})
    model.peft_config["default"].save_pretrained(folder)


def gathered_weights(fsdp_module) -> dict | None:
    """Under FSDP, the trainable weights gathered whole (a collective: call on every rank)."""
    return None if fsdp_module is None else _full_state(fsdp_module, None)[0]


def save(out: Path, name: str, model, optimizer, scheduler, state: dict, fsdp_module=None, main: bool = True) -> Path:
    """checkpoints/<name>, staged and renamed into place complete (atomic.staged), then the `latest` pointer
    replaced atomically: a full disk leaves the previous checkpoint and pointer as they were and raises
    atomic.WriteFailed, the staging folder removed. Earlier checkpoints are never deleted here."""
    final = out / "checkpoints" / name
    if fsdp_module is not None:
        weights, optim_state = _full_state(fsdp_module, optimizer)  # every rank: these are collectives
        if not main:
            return final
    else:
        weights, optim_state = None, optimizer.state_dict()
    trained = weights if weights is not None else {n: p for n, p in model.named_parameters() if p.requires_grad}
    needed = atomic.size_of(trained) + atomic.size_of(optim_state)
    with atomic.staged(final, needed) as tmp:
        write_adapter(tmp, model, weights)
        # through a Python file object: a failed write then carries its OSError (torch's own file writer
        # reports only "unexpected pos"), which names the reason (ENOSPC, EDQUOT, EFBIG)
        with open(tmp / "trainer.pt", "wb") as fh:
            torch.save({"optimizer": optim_state, "scheduler": scheduler.state_dict(),
                        "rng": {"python": random.getstate(), "torch": torch.get_rng_state()}}, fh)
        (tmp / "state.json").write_text(json.dumps(state))
    pointer = out / "checkpoints" / "latest"
    if pointer.exists() and pointer.read_text().strip() == name:  # this name again (a resumed, finished run)
        return final
    try:
        atomic.write_text(pointer, name)
    except atomic.WriteFailed:
        # The checkpoint is complete but the pointer still names the previous one: --resume would start
        # from that; remove this one so that what is on disk and what the pointer says agree.
        shutil.rmtree(final, ignore_errors=True)
        raise
    return final


def latest(out: Path) -> Path | None:
    pointer = out / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = out / "checkpoints" / pointer.read_text().strip()
    atomic.recover(path)  # a kill between publish's two renames left it under its aside name
    return path if (path / "state.json").exists() else None


def trim_metrics(out: Path, step: int) -> int:
    """Drop the metrics.jsonl rows after `step` (written between the checkpoint resumed from and the
    interruption): after a resume each step is logged once. Atomic; returns the rows dropped."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines()
    keep = [line for line in lines if _step_of(line) <= step]
    if len(keep) != len(lines):
        tmp = path.with_name(".metrics.jsonl.tmp")
        try:
            tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)  # no half-written copy left beside the log
            raise
    return len(lines) - len(keep)


def _step_of(line: str) -> float:
    try:
        return json.loads(line).get("step", 0)
    except (ValueError, AttributeError):
        return float("inf")  # a row cut by the kill: dropped


def read_state(path: Path) -> dict:
    """The run state a checkpoint saved (epoch, batch, step, losses...)."""
    return json.loads((path / "state.json").read_text())


def restore_weights(path: Path, model, fsdp_module=None) -> dict:
    """The adapter's weights into the model; the saved run state. Without FSDP: before wrapping. Under
    FSDP: after (the model may be sharded while it is built): every process reads the file and keeps its
    shard, through torch's distributed state-dict API (a sharded parameter refuses a plain copy)."""
    from safetensors.torch import load_file
    saved = load_file(path / "adapter_model.safetensors")
    if fsdp_module is None:
        from peft import set_peft_model_state_dict
        set_peft_model_state_dict(model, saved)
    else:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        names = adapter_names(model)
        missing = sorted(set(names) - set(saved))
        if missing:
            raise ValueError(f"{path / 'adapter_model.safetensors'}: no {', '.join(missing[:3])}")
        set_model_state_dict(fsdp_module, {"peft_model." + names[k]: saved[k] for k in names},
                             options=StateDictOptions(full_state_dict=True, strict=False))
    return read_state(path)


def adapter_names(model) -> dict[str, str]:
    """{name in the adapter file: the trained parameter's name in the model}, as peft names them: peft's
    own get_peft_model_state_dict is asked to name a stand-in of every trained parameter."""
    from peft import get_peft_model_state_dict
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    named = get_peft_model_state_dict(model, state_dict={n: torch.tensor(i) for i, n in enumerate(trained)})
    return {k: trained[int(v)] for k, v in named.items()}


def restore_training(path: Path, optimizer, scheduler, fsdp_module=None) -> None:
    """Optimizer, scheduler and RNG state (after the optimizer exists, i.e. after wrapping)."""
    blob = torch.load(path / "trainer.pt", weights_only=False)
    if fsdp_module is not None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(fsdp_module, optimizer, blob["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    random.setstate(blob["rng"]["python"])
    torch.set_rng_state(blob["rng"]["torch"])
