"""Will the run's output fit on its disk? What the runner writes, from the model's shape and the config:
a checkpoint per epoch (the trainable weights in fp32 + the optimizer state; all are kept), with save_steps
the mid-epoch ones too (all kept as well: checkpoint.save deletes none), the float base when the model is
built from model_config, the final adapter. The runner stops cleanly on a full disk
(train/envdoctor_runner/atomic.py); this says so before hours of training instead of after.

The mid-epoch checkpoints depend on the steps per epoch, which the preflight only bounds from above (one
token a byte of text, config.datasets): they are counted "up to", and warned of rather than refused."""

from __future__ import annotations

import shutil
from pathlib import Path

from envdoctor.training.estimate import OPT_BYTES, PAGED_BYTES, Shape, estimate

SLACK = 1_000_000  # train.log, metrics.jsonl, the plot, tokenizer and config files


def _mb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def mid_epoch_checkpoints(steps_per_epoch: int, save_steps: int, first_epoch: int, epochs: int) -> int:
    """How many step-N checkpoints epochs first_epoch+1..epochs write: the runner saves after a global
    step that save_steps divides, except an epoch's last step (its epoch-N checkpoint is written there)."""
    return sum((e * steps_per_epoch - 1) // save_steps - (e - 1) * steps_per_epoch // save_steps
               for e in range(first_epoch + 1, epochs + 1))


def steps_per_epoch(chunks: int, micro_batch_size: int, accumulation: int) -> int:
    """Optimizer steps an epoch of `chunks` training chunks takes (schedule.steps, any number of processes)."""
    return -(-(-(-chunks // micro_batch_size)) // accumulation)


def run_bytes(cfg: dict, model: dict, float_bytes: int, outdir: Path | None = None,
              epoch_steps: int | None = None) -> dict[str, float]:
    """Bytes the run will write, by part (`cfg`: a resolved config; `model`: config.json's fields). With
    `outdir` (a resumed run) the checkpoints already there and a complete float base are not counted. With
    `epoch_steps` (optimizer steps per epoch) and save_steps, "step checkpoints": the mid-epoch ones."""
    shape = Shape.from_config(model)
    e = estimate(shape, cfg)
    opt = cfg["optimizer"]
    checkpoint = e.adapter_bytes_fp32 + e.trainable * max(OPT_BYTES.get(opt, 8.0), PAGED_BYTES.get(opt, 0.0))
    done = 0
    if outdir is not None and (outdir / "checkpoints").is_dir():
        done = sum(1 for p in (outdir / "checkpoints").glob("epoch-*") if (p / "state.json").exists())
    parts = {"checkpoint": checkpoint, "checkpoints": checkpoint * max(cfg["num_epochs"] - done, 0),
             "adapter": e.adapter_bytes_fp32, "other": SLACK}
    if cfg.get("save_steps") and epoch_steps:
        parts["step checkpoints"] = checkpoint * mid_epoch_checkpoints(epoch_steps, cfg["save_steps"], done,
                                                                       cfg["num_epochs"])
    if isinstance(cfg.get("model_config"), dict) and not (outdir and (outdir / "base" / "config.json").exists()):
        params = shape.layers * (sum(i * o for i, o in shape.linears().values()) + 2 * shape.hidden) \
            + shape.vocab * shape.hidden * (1 if shape.tied else 2) + shape.hidden
        parts["base"] = params * float_bytes
    return parts


def space_problem(cfg: dict, model: dict | None, outdir: Path, gpu: bool, resume: bool = False,
                  free: int | None = None, epoch_steps: int | None = None) -> tuple[str, bool] | None:
    """None when the output folder's filesystem has room for the run, else (the line that says what is
    missing and what to do, whether that is certain). Certain: the per-epoch checkpoints, the float base
    and the adapter do not fit; else only the mid-epoch checkpoints may not (`epoch_steps`: an upper bound
    on the optimizer steps per epoch). `gpu`: the run trains on a GPU (bf16: "auto" means bf16 there, fp32
    on a CPU)."""
    if not isinstance(model, dict):
        return None  # no shape, no estimate (config.memory says so)
    half = cfg["bf16"] is True or (cfg["bf16"] == "auto" and gpu)
    try:
        parts = run_bytes(cfg, model, 2 if half else 4, outdir if resume else None, epoch_steps)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None  # a shape the estimate cannot read: config.memory reports it
    if free is None:
        try:
            free = shutil.disk_usage(outdir).free
        except OSError:
            return None
    certain = sum(v for k, v in parts.items() if k not in ("checkpoint", "step checkpoints"))
    total = certain + parts.get("step checkpoints", 0)
    if free >= total:
        return None
    size = parts["checkpoint"]
    n = round(parts["checkpoints"] / size) if size else 0
    what = [f"{n} checkpoint(s) of {_mb(size)} (trainable weights + optimizer state)"]
    what += [f"the float base {_mb(parts['base'])}"] if "base" in parts else []
    what.append(f"the adapter {_mb(parts['adapter'])}")
    if "step checkpoints" in parts:
        steps = round(parts["step checkpoints"] / size) if size else 0
        more = (f"; with save_steps {cfg['save_steps']}, up to {steps} mid-epoch checkpoint(s) more, "
                f"{_mb(parts['step checkpoints'])} (at most {epoch_steps} steps an epoch, counted from the text "
                "at one token a byte)")
    else:
        more = f"; save_steps adds {_mb(size)} per checkpoint" if cfg.get("save_steps") else ""
    if free < certain:
        return (f"output_dir {outdir}: {_mb(free)} free on its filesystem, and this run writes about "
                f"{_mb(certain)} ({', '.join(what)}){more}. Free space there, or pass --output-dir on another "
                "disk (--force starts anyway; a run that fills the disk stops at a checkpoint, and --resume "
                "continues it)"), True
    return (f"output_dir {outdir}: {_mb(free)} free on its filesystem; this run writes {_mb(certain)} "
            f"({', '.join(what)}){more}: the disk may fill before the end. A run that fills it stops at a "
            "checkpoint, and --resume continues it once there is space (a larger save_steps writes fewer)"), False
