"""`envdoctor check --config FILE`: the config's errors, and what the run costs before anything loads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from envdoctor.facts.gpu import Gpu, GpuFacts
from envdoctor.facts.torch_build import TorchFacts
from envdoctor.model import Remedy, Result, fail, ok, skip, warn
from envdoctor.registry import check

if TYPE_CHECKING:  # annotations only: the facts' modules load when their checks run
    from envdoctor.facts.train_config import TrainConfigFacts


@check("config.valid", "Training config", "Config", "every key of the training config, all errors at once",
       needs=("train_config",), option="config")
def valid(train_config: TrainConfigFacts) -> Result:
    c = train_config.config
    if c.errors:
        return fail(f"{len(c.errors)} error(s) in {c.path}", c.errors + c.warnings,
                    Remedy(text="Fix the keys named above; `envdoctor train` refuses to start until then."))
    if c.warnings:
        return warn(f"{c.path}: {len(c.warnings)} key(s) envdoctor does not use", c.warnings)
    return ok(f"{c.path}: valid")


@check("config.memory", "Fits in GPU memory", "Config",
       "trainable parameters, adapter size, modules_to_save cost and peak GPU memory (allocated, reserved, on the "
       "card) per GPU of the run, under the allocator setting it will have, from config.json alone; fails a run "
       "whose allocator variable holds a value torch refuses (`expandable_segments:true`), with the mended export",
       needs=("train_config", "gpu", "torch"), option="config")
def memory(train_config: TrainConfigFacts, gpu: GpuFacts, torch: TorchFacts | None = None) -> Result:
    # Imported here: a check without --config never loads the estimator.
    from envdoctor.training.allocator import allocator_in_force, async_backend, refused_in_force
    from envdoctor.training.estimate import (FIT_ERROR, HOLDOUT_ERROR, MARGIN, GiB, Shape, estimate, gpus_to_fit,
                                             ways_to_fit)
    cfg, model = train_config.config.resolved(), train_config.model
    # which allocator variable torch reads depends on its version (PYTORCH_ALLOC_CONF from 2.9 on); no torch in
    # the target yet: the one it would install now, a current one
    torch_version = torch_minor(torch)
    alloc_env = dict(train_config.alloc_env)
    refused = refused_in_force(alloc_env, train_config.engine, torch_version)
    if refused:  # the run dies at its first CUDA allocation; what follows is estimated for the mended value
        alloc_env[refused[0]] = refused[2]
    if model is None:
        if refused:
            return _refused(refused, train_config.alloc_env, [])
        return warn(f"cannot estimate: no config.json for {cfg.get('base_model')!r}",
                    [f"looked in {p}" for p in train_config.looked] + ["and envdoctor's table of known shapes"],
                    Remedy(text="Download the model (or its config.json) first, or add model_config."))
    runner = train_config.engine == "runner"
    used, note = run_gpus(gpu, train_config.visible_devices, train_config.nproc, runner)
    nproc = max(len(used), 1) if runner and train_config.nproc is None else (train_config.nproc or 1)
    allocator, set_by = allocator_in_force(alloc_env, train_config.engine, torch_version)
    try:
        shape = Shape.from_config(model)
        e = estimate(shape, cfg, engine=train_config.engine, nproc=nproc if runner else 1, allocator=allocator)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        if refused:
            return _refused(refused, train_config.alloc_env, [])
        return skip(f"cannot estimate from this config ({type(exc).__name__}: {exc}); see config.valid")
    who = (f"envdoctor's runner, {nproc} process(es)" + (", FSDP-sharded" if e.sharded else "") if runner else
           f"axolotl / the Hugging Face path (the larger of a PEFT-docs loop and Trainer: {e.engine})")
    details = [f"memory of {who}; shape from {train_config.model_from}",
               f"trainable: {e.lora_params:,} LoRA"
               + (f" + {e.save_params:,} modules_to_save" if e.save_params else ""),
               f"adapter on disk: {e.adapter_bytes_bf16 / 1e6:,.0f} MB in bf16, {e.adapter_bytes_fp32 / 1e6:,.0f} MB "
               "in fp32"]
    details += [f"{name}: {v / GiB:.2f} GiB" for name, v in e.parts.items() if v]
    details += [f"peak allocated {e.peak / GiB:.2f} GiB; the allocator's reserve {e.reserve / GiB:.2f} GiB more "
                f"(peak reserved {e.reserved / GiB:.2f} GiB)",
                f"paged optimizer state {e.paged / GiB:.2f} GiB (on the card, outside torch's allocator); CUDA context "
                f"{e.context / GiB:.2f} GiB; margin {MARGIN:.0%}",
                allocator_line(allocator, set_by, runner, alloc_env, torch_version)]
    decides = (set_by or "").partition("=")[0]
    if decides and async_backend(alloc_env.get(decides, "")):
        details.append(f"backend:cudaMallocAsync in {decides}: CUDA's own pool allocator, whose slack envdoctor has "
                       "not measured — the reserved figure is the caching allocator's, take it as a guide only")
    if e.save_params:
        no_save = estimate(shape, dict(cfg, lora_modules_to_save=[]), engine=train_config.engine, nproc=e.nproc,
                           allocator=allocator)
        details.append(f"modules_to_save costs {(e.needed - no_save.needed) / GiB:.1f} GiB and "
                       f"{e.save_params:,} trainable parameters: only needed when you add tokens")
    held_low, held_high = HOLDOUT_ERROR[(train_config.engine, allocator)]
    fit_low, fit_high = FIT_ERROR[(train_config.engine, allocator)]
    low = min(held_low, fit_low, 0.0)  # the worst under-estimate measured, held out or fitted to
    # what the card holds if this run's reserved peak is as far above its estimate as the worst measured run's
    worst = e.reserved / (1 + low) + e.paged + e.context
    details.append(f"this estimate's error on H200 runs: {held_low * 100:+.1f} … {held_high * 100:+.1f} % of the "
                   f"reserved peak held out, {fit_low * 100:+.1f} … {fit_high * 100:+.1f} % on those it was fitted "
                   f"to; at the low end the run holds {worst / GiB:.1f} GiB (docs/training.md)")
    if note:
        details.append(note)
    data = dict(e.to_data(), allocator_set_by=set_by, holdout_error=[held_low, held_high],
                fit_error=[fit_low, fit_high], worst_case_card_bytes=round(worst))
    summary = (f"needs {e.needed / GiB:.1f} GiB per GPU ({e.peak / GiB:.1f} allocated, {e.reserved / GiB:.1f} "
               f"reserved, + {(e.paged + e.context) / GiB:.1f} paged optimizer state and CUDA context, + {MARGIN:.0%})")
    free_of = [g.mem_free for g in used]
    if refused:  # no memory figure matters before that is mended
        data.update(gpus=[g.index for g in used], free_bytes=None, fits=None)
        result = _refused(refused, train_config.alloc_env, [f"the estimate, once it is mended: {summary}"] + details)
        result.data = data
        return result
    if not used or None in free_of:
        data.update(gpus=[g.index for g in used], free_bytes=None, fits=None)
        why = note or ("no GPU here" if not gpu.present else "the GPU does not report its free memory")
        result = skip(f"{summary}: nothing to compare with ({why})", details)
        result.data = data
        return result
    free = min(free_of)
    where = ", ".join(f"GPU {g.index} ({g.name})" for g in used)
    data.update(gpus=[g.index for g in used], free_bytes=free, fits=e.needed <= free)
    if e.needed <= free:
        only = ""
        if e.sharded:  # would one GPU do, or is the sharding what makes it fit?
            whole = estimate(shape, dict(cfg, fsdp=False), engine=train_config.engine, allocator=allocator).needed
            only = (f"; only sharded: unsharded it needs {whole / GiB:.1f} GiB" if whole > free else
                    f"; it fits one GPU unsharded too ({whole / GiB:.1f} GiB)")
        if worst > free:  # the margin does not cover the estimate's known error: say so, and how much is missing
            result = warn(f"fits only tightly: {summary} of {free / GiB:.1f} GiB free on {where}{only}; but on "
                          f"measured runs this engine reserved up to {-low / (1 + low):.1%} more than estimated, "
                          f"{worst / GiB:.1f} GiB here", details,
                          Remedy(text="Leave more room: " + "; or ".join(
                              ways_to_fit(shape, cfg, free * (1 + low), train_config.engine, e.nproc,
                                          allocator)[:2] or ["a GPU with more memory"]) + "."))
        else:
            result = ok(f"fits: {summary} of {free / GiB:.1f} GiB free on {where}{only}", details)
        result.data = data
        return result
    ways = ways_to_fit(shape, cfg, free, train_config.engine, e.nproc, allocator)
    if runner and not e.sharded:
        n = gpus_to_fit(shape, cfg, free, allocator=allocator)
        data["gpus_to_fit_sharded"] = n
        if n:
            ways.append(f"fsdp: true over {n} GPUs (`envdoctor train --fsdp --nproc {n}`, each with {free / GiB:.1f} "
                        f"GiB free) → {estimate(shape, dict(cfg, fsdp=True), nproc=n, allocator=allocator).needed / GiB:.1f}"
                        " GiB per GPU")
    result = fail(f"does not fit: {summary}, but {where} has {free / GiB:.1f} GiB free", details,
                  Remedy(text="To fit: " + ("; or ".join(ways) if ways else "a GPU with more memory") + "."))
    result.data = data
    return result


def _refused(refused: tuple[str, str, str], env: dict[str, str], details: list[str]) -> Result:
    """The run cannot start: torch refuses the value of the allocator variable it reads (allocator.refused)."""
    name, why, mended = refused
    return fail(f"the run cannot start: torch refuses {name}={env.get(name, '')!r} — {why}", details,
                Remedy(f"export {name}='{mended}'",
                       f"Mend {name} where you set it (shell profile, job script, .env), then check again."))


def torch_minor(torch: TorchFacts | None) -> tuple[int, int] | None:
    """(major, minor) of the target's torch, or None (not installed, unreadable)."""
    try:
        major, minor = (int(x) for x in (torch.minor or "").split("."))  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        return None
    return major, minor


def allocator_line(allocator: str, set_by: str | None, runner: bool, env: dict[str, str] | None = None,
                   torch_version: tuple[int, int] | None = None) -> str:
    """The detail line that says which allocator setting the reserve is estimated for, and how far to trust it.
    `env`: the allocator variables of the environment the run starts from (those torch will not read are named);
    `torch_version`: the target's (None: a current torch)."""
    from envdoctor.training.allocator import torch_reads
    from envdoctor.training.estimate import FIT_ERROR, HOLDOUT_ERROR

    def band(engine: str, allocator: str) -> str:  # every measured point's error, held out or fitted to
        (held_low, held_high), (fit_low, fit_high) = HOLDOUT_ERROR[(engine, allocator)], FIT_ERROR[(engine, allocator)]
        return f"{min(held_low, fit_low) * 100:+.1f} … {max(held_high, fit_high) * 100:+.1f} %"
    env = env or {}
    reads = torch_reads(torch_version)
    copied = runner and set_by and len(reads) == 1 and not set_by.startswith(f"{reads[0]}=")
    if copied:  # torch < 2.9 reads PYTORCH_CUDA_ALLOC_CONF alone: the runner copies the user's setting there
        set_by += (f", which the runner copies into {reads[0]}, the variable torch {torch_version[0]}."
                   f"{torch_version[1]} reads")
    if allocator == "expandable":
        line = "allocator: expandable segments " + (
            f"({set_by})" if set_by else "(the runner sets them when no allocator variable is set)" if runner
            else f"(`axolotl train` sets {'PYTORCH_ALLOC_CONF' if len(reads) > 1 else 'PYTORCH_CUDA_ALLOC_CONF'} "
                 "to them when it is unset)")
    elif runner:
        measured = (f"estimated from the runner's 8B measurements under it (measured error {band('runner', 'caching')}); "
                    "the runner's own expandable segments reserved 0.0-1.5 GiB less on that grid")
        # (a variable of the user's decides whenever the runner gets the caching allocator: it sets expandable
        # segments when none is set, and copies one an older torch would not read into the one it does)
        line = (f"allocator: torch's default caching allocator ({set_by or 'a variable of yours'}"
                f"{'' if copied else ', which the runner keeps'}): {measured}")
    else:
        line = (f"allocator: torch's default caching allocator ({set_by}, which axolotl keeps): its reserved peak "
                "varies by up to ~3 GiB between near-equal configs (the Hugging Face path's measured error "
                f"{band('peft', 'caching')}, against {band('peft', 'expandable')} with expandable_segments:True in "
                "it: docs/training.md)")
    # torch reads only the first variable present (≥ 2.9; older: PYTORCH_CUDA_ALLOC_CONF alone); the runner drops
    # blank ones first
    unread = [f"{k}={v!r}" for k, v in env.items()
              if not (set_by or "").startswith(f"{k}=") and (v.strip() or not runner)]
    if unread:
        which = (f"torch {torch_version[0]}.{torch_version[1]} reads only PYTORCH_CUDA_ALLOC_CONF" if len(reads) == 1
                 else "torch ≥ 2.9 reads only the first of " + ", ".join(reads) + " that is set")
        line += f"; not read: {', '.join(unread)} ({which})"
    return line


def run_gpus(gpu: GpuFacts, visible: str | None, nproc: int | None, runner: bool) -> tuple[list[Gpu], str | None]:
    """(the GPUs the run will use, a note when that is not every GPU the driver lists): CUDA_VISIBLE_DEVICES
    narrows and orders them (indices or GPU-UUID prefixes; CUDA stops at the first entry that names no GPU);
    the runner starts one process per GPU (--nproc N: the first N); axolotl is compared with the first."""
    gpus = list(gpu.gpus) if gpu.present else []
    note = None
    if visible is not None and gpus:
        chosen = []
        for entry in (e.strip() for e in visible.split(",")):
            match = [g for g in gpus if (entry.isdigit() and g.index == int(entry))
                     or (entry.startswith("GPU-") and g.uuid.startswith(entry))]
            if not match or match[0] in chosen:
                break
            chosen.append(match[0])
        note = f"CUDA_VISIBLE_DEVICES={visible!r}: " + (
            f"GPU {', '.join(str(g.index) for g in chosen)} of {len(gpus)}" if chosen else "hides every GPU")
        gpus = chosen
    if not gpus:
        return [], note
    if not runner:
        return gpus[:1], ((note + "; ") if note else "") + "axolotl starts its own processes: compared with the first GPU"
    if nproc is not None:
        if nproc > len(gpus):
            return [], f"--nproc {nproc}, but only {len(gpus)} GPU(s) visible"
        if nproc < len(gpus):
            note = (note + "; " if note else "") + f"--nproc {nproc}: the first {nproc} of {len(gpus)} visible GPU(s)"
        gpus = gpus[:nproc]
    return gpus, note


@check("config.axolotl_device", "axolotl on this device", "Config",
       "for `train --backend axolotl`: settings of the config that need CUDA, on a machine without it",
       needs=("train_config", "torch", "gpu"), option="config")
def axolotl_device(train_config: TrainConfigFacts, torch: TorchFacts, gpu: GpuFacts) -> Result:
    from envdoctor.training.backends import cpu_fix, cuda_only_settings
    if train_config.engine != "peft":  # train.py sets "peft" for --backend axolotl only
        return skip("not an axolotl run")
    if torch.installed and torch.cuda and gpu.present:
        return ok(f"CUDA {torch.cuda} and {len(gpu.gpus)} GPU(s): axolotl's CUDA kernels can run")
    where = "torch is a CPU-only build" if torch.installed and not torch.cuda else "no GPU is visible"
    cfg = train_config.config.data
    found = cuda_only_settings(cfg)
    if not found:
        return ok(f"{where}: axolotl trains on the CPU (no CUDA-only setting in the config)")
    # The fix goes into the message: `train` prints messages only, and `check --config` skips this check.
    return fail(f"{where}, but the config asks axolotl for CUDA-only kernels; to train on the CPU, set "
                f"{cpu_fix(cfg)} in {train_config.config.path}", found,
                Remedy(text=f"Set {cpu_fix(cfg)} in the config, or run it on a machine with an NVIDIA GPU."))
