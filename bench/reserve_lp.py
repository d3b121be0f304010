#!/usr/bin/env python3
"""How far a config-only reserve can go: a linear program over the measured points of one engine under
expandable segments. The reserve has the form of estimate.py's — allocated estimate + a sum of non-negative
constants × terms of the config, here a superset of the estimator's (below) — and the program maximises the
margin t by which every point stays inside issue #18's budget: estimate / measured − 1 within
[−5 % + t, +10 % − t]. t < 0: no set of constants holds every point
inside, whatever a fit does; t ≥ 0 but small: a blind round can still put a point just outside.

    PYTHONPATH=src python bench/reserve_lp.py bench/results/h200-calibration-*.jsonl
        [--engine runner|hf-loop|hf-trainer]
        [--measured-allocated]   (the measured allocated peak in place of the estimate: the reserve's terms alone)

Needs scipy (pip install scipy): a bench tool, not a dependency of envdoctor. Every point of the files clean by
the guards (bench/fit_memory.py load_rows), whatever its role. Terms (bytes): a constant, the allocated estimate,
one loss's fp32 logits (the runner: one chunk), the same only when the loss phase is the peak, the
modules_to_save gradients (in place, no accumulation, loss peak / with accumulation / the copies of a tied
shape), one layer's bf16 weights, checkpointing on; the Hugging Face engines: a constant, allocated, logits,
modules_to_save, tied copies, activations, layer weights, accumulation — each with and without checkpointing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibrate_memory import point_config  # noqa: E402
from fit_memory import SHAPES, load_rows, predicted  # noqa: E402

from envdoctor.training import estimate as E  # noqa: E402

GiB = E.GiB
LOSS_PART = "lm_head's gradient and buffers (loss)"  # a part of runner_phases' loss phase only


def runner_terms(r: dict, allocated: float) -> dict[str, float]:
    cfg, sh = point_config(r), E.Shape.from_config(SHAPES[r["shape"]])
    tokens = r["seq"] * r["micro"]
    chunk = min(cfg["loss_chunk_tokens"], tokens)
    loss_peak = LOSS_PART in predicted(r).parts  # the estimate's peak phase is the loss (estimate.runner_phases)
    save = (2 if r["modules_to_save"] else 0) * sh.vocab * sh.hidden
    accum = cfg["gradient_accumulation_steps"] > 1
    return {"GiB": GiB, "allocated": allocated, "chunk logits": 4.0 * chunk * sh.vocab,
            "chunk logits, loss peak": 4.0 * chunk * sh.vocab * loss_peak,
            "save grads": (4.0 if sh.tied else 2.0) * save,
            "save grads, loss peak, no accumulation": 2.0 * save * (not accum) * (not sh.tied) * loss_peak,
            "save grads, accumulation": 2.0 * save * accum * (not sh.tied),
            "save copies (tied)": 4.0 * save * sh.tied,
            "layer weights": layer_weights(sh),
            "checkpointing": GiB * r["gradient_checkpointing"]}


def layer_weights(sh: E.Shape) -> float:
    """One decoder layer's linears in bf16, bytes."""
    return 2.0 * sum(i * o for i, o in sh.linears().values())


def hf_terms(r: dict, allocated: float) -> dict[str, float]:
    cfg, sh = point_config(r), E.Shape.from_config(SHAPES[r["shape"]])
    tokens = r["seq"] * r["micro"]
    save = (2 if r["modules_to_save"] else 0) * sh.vocab * sh.hidden
    accum = cfg["gradient_accumulation_steps"] > 1
    out = {}
    for tag, on in (("checkpointing", r["gradient_checkpointing"]), ("none", not r["gradient_checkpointing"])):
        out.update({f"GiB, {tag}": GiB * on, f"allocated, {tag}": allocated * on,
                    f"logits, {tag}": 4.0 * tokens * sh.vocab * on, f"save, {tag}": 4.0 * save * on,
                    f"tied copies, {tag}": 4.0 * save * on * sh.tied,
                    f"activations, {tag}": 2.0 * tokens * sh.hidden * sh.layers * on,
                    f"layer weights, {tag}": layer_weights(sh) * on,
                    f"accumulation, {tag}": 4.0 * save * on * accum})
    return out


def solve(rows: list[dict], engine: str, measured_allocated: bool = False):
    """(margin t, {term: constant}, [(row, error)]) of the linear program on `rows`."""
    import numpy as np
    from scipy.optimize import linprog
    terms = runner_terms if engine == "runner" else hf_terms
    base, feats = [], []
    for r in rows:
        a = float(r["peak_allocated"]) if measured_allocated else predicted(r).peak
        base.append(a)
        feats.append(terms(r, a))
    names = list(feats[0])
    x = np.array([[f[n] for n in names] for f in feats]) / GiB
    a0, m = np.array(base) / GiB, np.array([r["peak_reserved"] for r in rows], float) / GiB
    # a0 + x·c ≥ (0.95 + t) m  and  a0 + x·c ≤ (1.10 − t) m, c ≥ 0: maximise t
    a_ub = np.vstack([np.hstack([-x, m[:, None]]), np.hstack([x, m[:, None]])])
    b_ub = np.concatenate([a0 - 0.95 * m, 1.10 * m - a0])
    res = linprog(np.r_[np.zeros(len(names)), -1.0], A_ub=a_ub, b_ub=b_ub,
                  bounds=[(0, None)] * len(names) + [(None, None)], method="highs")
    if not res.success:
        raise SystemExit(f"linear program: {res.message}")
    c = res.x[:-1]
    err = (a0 + x @ c) / m - 1
    return float(res.x[-1]), dict(zip(names, c)), list(zip(rows, err))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--engine", choices=E.ENGINES, default="runner")
    ap.add_argument("--measured-allocated", action="store_true")
    args = ap.parse_args(argv)
    rows = [r for r in load_rows(args.files) if r["engine"] == args.engine and r["allocator"] == "expandable"]
    if not rows:
        raise SystemExit(f"no {args.engine} point measured under expandable segments in {', '.join(args.files)}")
    t, constants, errs = solve(rows, args.engine, args.measured_allocated)
    e = sorted(err for _, err in errs)
    print(f"{args.engine}: {len(rows)} points under expandable segments; best margin t = {t * 100:+.2f} % "
          f"({'every point inside' if t >= 0 else 'no set of constants holds every point inside'}); "
          f"errors at that optimum {e[0] * 100:+.1f} … {e[-1] * 100:+.1f} %")
    for name, value in constants.items():
        if value > 1e-9:
            print(f"    {name}: {value:.4g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
