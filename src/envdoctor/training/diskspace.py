"""Will the run's output fit on its disk? What the runner writes, from the model's shape and the config:
a checkpoint per epoch (the trainable weights in fp32 + the optimizer state; all are kept), the float base
when the model is built from model_config, the final adapter. The runner stops cleanly on a full disk
(train/envdoctor_runner/atomic.py); this says so before hours of training instead of after."""

from __future__ import annotations

import shutil
from pathlib import Path

from envdoctor.training.estimate import OPT_BYTES, PAGED_BYTES, Shape, estimate

SLACK = 1_000_000  # train.log, metrics.jsonl, the plot, tokenizer and config files


def _mb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def run_bytes(cfg: dict, model: dict, float_bytes: int, outdir: Path | None = None) -> dict[str, float]:
    """Bytes the run will write, by part (`cfg`: a resolved config; `model`: config.json's fields). With
    `outdir` (a resumed run) the checkpoints already there and a complete float base are not counted."""
    shape = Shape.from_config(model)
    e = estimate(shape, cfg)
    opt = cfg["optimizer"]
    checkpoint = e.adapter_bytes_fp32 + e.trainable * max(OPT_BYTES.get(opt, 8.0), PAGED_BYTES.get(opt, 0.0))
    done = 0
    if outdir is not None and (outdir / "checkpoints").is_dir():
        done = sum(1 for p in (outdir / "checkpoints").glob("epoch-*") if (p / "state.json").exists())
    parts = {"checkpoint": checkpoint, "checkpoints": checkpoint * max(cfg["num_epochs"] - done, 0),
             "adapter": e.adapter_bytes_fp32, "other": SLACK}
    if isinstance(cfg.get("model_config"), dict) and not (outdir and (outdir / "base" / "config.json").exists()):
        params = shape.layers * (sum(i * o for i, o in shape.linears().values()) + 2 * shape.hidden) \
            + shape.vocab * shape.hidden * (1 if shape.tied else 2) + shape.hidden
        parts["base"] = params * float_bytes
    return parts


def space_problem(cfg: dict, model: dict | None, outdir: Path, gpu: bool, resume: bool = False,
                  free: int | None = None) -> str | None:
    """None when the output folder's filesystem has room for the run, else the line that says what is
    missing and what to do. `gpu`: the run trains on a GPU (bf16: "auto" means bf16 there, fp32 on a CPU)."""
    if not isinstance(model, dict):
        return None  # no shape, no estimate (config.memory says so)
    half = cfg["bf16"] is True or (cfg["bf16"] == "auto" and gpu)
    try:
        parts = run_bytes(cfg, model, 2 if half else 4, outdir if resume else None)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None  # a shape the estimate cannot read: config.memory reports it
    if free is None:
        try:
            free = shutil.disk_usage(outdir).free
        except OSError:
            return None
    total = sum(v for k, v in parts.items() if k != "checkpoint")
    if free >= total:
        return None
    n = round(parts["checkpoints"] / parts["checkpoint"]) if parts["checkpoint"] else 0
    what = [f"{n} checkpoint(s) of {_mb(parts['checkpoint'])} (trainable weights + optimizer state)"]
    what += [f"the float base {_mb(parts['base'])}"] if "base" in parts else []
    what.append(f"the adapter {_mb(parts['adapter'])}")
    more = f"; save_steps adds {_mb(parts['checkpoint'])} per checkpoint" if cfg.get("save_steps") else ""
    return (f"output_dir {outdir}: {_mb(free)} free on its filesystem, and this run writes about {_mb(total)} "
            f"({', '.join(what)}{more}). Free space there, or pass --output-dir on another disk "
            "(--force starts anyway; a run that fills the disk stops at a checkpoint, and --resume continues it)")
