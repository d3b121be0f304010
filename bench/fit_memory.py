#!/usr/bin/env python3
"""Fit the estimator's constants (envdoctor.training.estimate.CONSTANTS) to bench/calibrate_memory.py's
JSON lines, and print the fit and hold-out tables in Markdown: measured and estimated peak allocated and
reserved, error %, per engine and allocator setting (each run's header says which: the runner's own
expandable segments; the Hugging Face engines under torch's caching allocator when no variable was set, else
the variable's setting, e.g. axolotl's), and the verdict for the Hugging Face path (the larger of the docs
loop's and Trainer's estimates against the larger of their measured peaks: what `--backend axolotl` reports).

    PYTHONPATH=src python bench/fit_memory.py bench/results/h200-calibration-*.jsonl [--engine runner]
        [--write]      (also rewrite the fitted NAME=value pairs in src/envdoctor/training/estimate.py)
        [--no-fit]     (the tables with the constants as they are)
        [--accept-unguarded]  (also points without calibrate_memory.py's guards: lines made without a GPU)
        [--allocator expandable|caching]  (only the points measured under that setting)

Points the guards flag are left out, each with its reason printed: a point whose baseline was above the
built base's, whose checkpointing was not what it asked for, or whose base was not put back; every point
of a block (one run's shape × engine) whose repeat of its first point did not reproduce the peak within
2 %, or that has no repeat at all (cut short, or measured before the guards: the 2026-11-30 lines).

The allocated constants of each engine are fitted on its "fit" rows, then RESERVE_FRAC and RESERVE_GIB
on the measured reserved peaks: least squares of the relative errors (Gauss-Newton from the current
values), then coordinate descent on the worst error, an under-estimate counting double (an estimate too
low sends a user into an out-of-memory crash; one too high only costs a bigger GPU). Trainer's attention
terms are held at 0 (HELD_BY_ENGINE: bf16 autocast, flash SDPA). The RESERVE_* constants are fitted after
the others, on the reserved peaks. The acceptance of issue #18: every hold-out point within ±10 % of the
measured reserved peak, none more than 5 % under.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibrate_memory import point_config  # noqa: E402  (bench/, beside this file; imports no torch)
from hf_loop import SHAPES  # noqa: E402

from envdoctor.training import allocator as A  # noqa: E402
from envdoctor.training import estimate as E  # noqa: E402

# Hold-out points that became fit points, by (file, engine), and why: the runner's accumulation points of
# 2026-12-01 chose its accumulation rule (estimate.py: lm_head's gradient already in a one-chunk peak); round 6b
# (in h200-calibration-2026-12-01-round6-rest.jsonl) was measured after that rule was committed, to test it blind.
FIT_BY_CHOICE = {("h200-calibration-2026-12-01-accum.jsonl", "runner")}
# The runner after its one-pass loss (head_loss.py, fifth session): every point of the rounds 1-7 grids measured
# again is a fit point, for the allocated constants too; so are the blind rounds 8, 9 and 10 measured with it, once
# read (the first fit, a5c95e9, held 43 of their 46 points inside: bench/results/README.md); its hold-out is round
# 11 (RUNNER_BLIND), drawn and measured after the phase model (runner_phases) was fitted and committed.
# (Under the caching allocator its grid 1 keeps its roles: the reserve is fitted on the fit points, held out on
# the others.)
FIT_BY_CHOICE |= {(f"h200-calibration-2026-12-01-runner3-{part}.jsonl", "runner")
                  for part in ("small", "8b", "blind-small", "blind-8b")}
RUNNER_BLIND = ("h200-calibration-2026-12-01-runner3-round11",)
BLIND_AFTER_REFIT = ("h200-calibration-2026-12-01-round8", "h200-calibration-2026-12-01-round9")
HOLDOUT_ONLY = {("hf-loop", "expandable"): BLIND_AFTER_REFIT, ("hf-trainer", "expandable"): BLIND_AFTER_REFIT,
                ("runner", "expandable"): RUNNER_BLIND}
HELD: set[str] = set()  # every RESERVE_* constant is fitted second, on the reserved peaks
# Held per engine, by how the engine runs: Trainer with bf16 autocasts, so attention gets bf16 q/k/v and
# SDPA's flash kernel, which keeps no seq² tensor, recomputed or saved (ATT_GC = ATT_SAVED = 0); the docs
# loop does not autocast (an fp32 residual stream: seq² measured with and without checkpointing). Trainer's
# SAVE_GRAD is held at the fp32 gradients' 4 B: no Trainer point peaks at the end of backward to fit it on.
HELD_BY_ENGINE = {"hf-trainer": {"ATT_GC", "ATT_SAVED", "SAVE_GRAD"}}
ESTIMATE_PY = Path(E.__file__)


def load_rows(paths: list[str], accept_unguarded: bool = False, ignored: list[str] | None = None) -> list[dict]:
    """The measured points fit for fitting: kind "point", no error, and clean by the guards of
    bench/calibrate_memory.py. Left out, each with its reason appended to `ignored`: a point flagged
    contaminated (baseline above the built base's, checkpointing not as asked, base not as loaded) or
    refused; every point of a block (one run's shape × engine) whose repeat of its first point did not
    reproduce the peak, or that has no verdict at all (no repeat: cut short, or measured before the
    guards existed: accept_unguarded=True takes those, for lines made without a GPU)."""
    ignored = [] if ignored is None else ignored
    rows = []
    for path in paths:
        run, allocator, runner_allocator = 0, "caching", "expandable"
        candidates: list[tuple[int, dict]] = []
        verdicts: dict[tuple, dict] = {}
        for n, line in enumerate(Path(path).read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise SystemExit(f"{path}:{n}: not JSON ({exc})")
            kind = row.get("kind")
            if kind == "header":
                run += 1
                env = {"PYTORCH_ALLOC_CONF": row.get("pytorch_alloc_conf"),
                       "PYTORCH_CUDA_ALLOC_CONF": row.get("pytorch_cuda_alloc_conf")}
                # as torch read them (none set: its default): the bench is not axolotl, which would set one; the
                # runner sets expandable segments for itself when none is set (its header may predate that)
                allocator = A.torch_allocator(env)[0]
                runner_allocator = allocator if any(v is not None for v in env.values()) else "expandable"
            elif kind == "block":
                verdicts[(run, row.get("shape"), row.get("engine"))] = row
            elif kind == "point" and not row.get("error") and row.get("peak_allocated"):
                row["_where"], row["_run"] = f"{path}:{n}", run
                row["allocator"] = runner_allocator if row.get("engine") == "runner" else allocator
                if (Path(path).name, row.get("engine")) in FIT_BY_CHOICE and row.get("role") == "holdout":
                    row["role"] = "fit"
                row["alloc_role"] = row.get("role")  # the role for the allocated constants
                blind = HOLDOUT_ONLY.get((row.get("engine"), row["allocator"]))
                if blind is not None and row.get("role") == "holdout" and not Path(path).name.startswith(blind):
                    row["role"] = "fit"
                candidates.append((n, row))
        for n, row in candidates:
            name = row.get("id") or (row.get("shape"), row.get("engine"), row.get("seq"), row.get("micro"))
            where = f"{row['_where']} {name}"
            if row.get("role") == "repeat":
                continue  # a guard, not a grid point
            if row.get("contaminated") or row.get("refused"):
                ignored.append(f"{where}: contaminated: {'; '.join(row.get('contaminated') or ['refused'])}")
                continue
            verdict = verdicts.get((row["_run"], row.get("shape"), row.get("engine")))
            if verdict is None:
                if "allocated_before" not in row and not accept_unguarded:
                    ignored.append(f"{where}: measured without the guards (no allocated_before, no repeat): "
                                   "points of one process may contaminate each other")
                    continue
                if "allocated_before" in row:
                    ignored.append(f"{where}: its block has no verdict (the repeat of its first point never ran)")
                    continue
            elif verdict.get("contaminated"):
                ignored.append(f"{where}: block {row['shape']}/{row['engine']} contaminated: "
                               + "; ".join(verdict.get("reasons") or ["(no reason given)"]))
                continue
            rows.append(row)
    return rows


def predicted(row: dict) -> E.Estimate:
    return E.estimate(E.Shape.from_config(SHAPES[row["shape"]]), point_config(row), engine=row["engine"],
                      allocator=row.get("allocator", "caching"))


def table_of(engine: str, allocator: str, name: str) -> dict[str, float]:
    """The dict of estimate.py that holds constant `name` for this engine under this allocator."""
    extra = E.reserve_overrides(engine, allocator) or {}
    return extra if name in extra else E.CONSTANTS[engine]


def penalty(est: float, measured: float) -> float:
    err = est / measured - 1
    return err if err >= 0 else -2 * err


def worst(rows: list[dict], key: str) -> float:
    if key == "peak_allocated":
        return max(penalty(predicted(r).peak, r[key]) for r in rows)
    return max(penalty(predicted(r).reserved, r[key]) for r in rows)


def descend(engine: str, names: list[str], rows: list[dict], key: str, rounds: int = 60,
            allocator: str = "caching") -> float:
    """Coordinate descent on the constants `names` of `engine` (under `allocator`) minimising worst(rows, key);
    returns that worst."""
    return descend_on([(table_of(engine, allocator, n), n) for n in names], lambda: worst(rows, key), rounds)


def descend_on(slots: list[tuple[dict, str]], objective, rounds: int = 60) -> float:
    """Coordinate descent on the constants table[name] of `slots` (kept ≥ 0) minimising objective()."""
    best = objective()
    steps = [max(abs(k[n]) * 0.25, 0.05) for k, n in slots]
    for _ in range(rounds):
        moved = False
        for i, (k, n) in enumerate(slots):
            for sign in (1, -1):
                old = k[n]
                k[n] = max(0.0, old + sign * steps[i])
                got = objective()
                if got < best - 1e-9:
                    best, moved = got, True
                else:
                    k[n] = old
        if not moved:
            steps = [s / 2 for s in steps]
            if max(steps) < 1e-4:
                break
    return best


def least_squares(engine: str, names: list[str], rows: list[dict], key: str, rounds: int = 6,
                  allocator: str = "caching") -> None:
    """Gauss-Newton on the relative errors (the estimate is linear in most constants; the runner's max()
    of two phases makes it piecewise linear), constants kept ≥ 0."""
    import numpy as np
    tables = {n: table_of(engine, allocator, n) for n in names}
    attr = "peak" if key == "peak_allocated" else "reserved"
    measured = np.array([r[key] for r in rows], float)

    def values() -> np.ndarray:
        return np.array([getattr(predicted(r), attr) for r in rows], float)
    for _ in range(rounds):
        base = values()
        jac = np.empty((len(rows), len(names)))
        for j, n in enumerate(names):
            k = tables[n]
            old, h = k[n], max(abs(k[n]) * 1e-3, 1e-4)
            k[n] = old + h
            jac[:, j] = (values() - base) / h
            k[n] = old
        step, *_ = np.linalg.lstsq(jac / measured[:, None], (measured - base) / measured, rcond=None)
        for n, d in zip(names, step):
            tables[n][n] = max(0.0, tables[n][n] + float(d))


def polish(slots: list[tuple[dict, str]], objective, rounds: int = 3, iters: int = 2000) -> float:
    """Nelder-Mead on the constants table[name] of `slots` (kept ≥ 0) from where they are, minimising
    objective(): coordinate descent stops at the corners the max() of the phases and of the errors makes."""
    import numpy as np

    def at(x) -> float:
        if (x < 0).any():
            return float("inf")
        for (k, n), v in zip(slots, x):
            k[n] = float(v)
        return objective()
    x0 = np.array([k[n] for k, n in slots], float)
    best = (x0, at(x0))
    for _ in range(rounds):
        pts = [best[0]] + [best[0] + np.eye(len(x0))[i] * max(abs(best[0][i]) * 0.2, 0.05) for i in range(len(x0))]
        vals = [at(p) for p in pts]
        for _ in range(iters):
            order = np.argsort(vals)
            pts, vals = [pts[i] for i in order], [vals[i] for i in order]
            if vals[-1] - vals[0] < 1e-7:
                break
            c = sum(pts[:-1]) / len(x0)
            xr = c + (c - pts[-1])
            fr = at(xr)
            if fr < vals[0]:
                xe = c + 2 * (c - pts[-1])
                fe = at(xe)
                pts[-1], vals[-1] = (xe, fe) if fe < fr else (xr, fr)
            elif fr < vals[-2]:
                pts[-1], vals[-1] = xr, fr
            else:
                xc = c + 0.5 * (pts[-1] - c)
                fc = at(xc)
                if fc < vals[-1]:
                    pts[-1], vals[-1] = xc, fc
                else:
                    pts = [pts[0] + 0.5 * (p - pts[0]) for p in pts]
                    vals = [at(p) for p in pts]
        i = int(np.argmin(vals))
        if vals[i] >= best[1] - 1e-6:
            break
        best = (pts[i], vals[i])
    at(best[0])
    return best[1]


def fit(engine: str, rows: list[dict], allocator: str = "caching", allocated_rows: list[dict] | None = None,
        reserve_only: bool = False) -> None:
    """Fit `engine`'s constants on the "fit" rows measured under `allocator`. Where the engine has reserve
    constants for that allocator beside CONSTANTS (estimate.reserve_overrides: the Hugging Face engines under
    expandable segments, the runner under the caching allocator), its allocated constants are those fitted
    under its first allocator (the allocator changes the slack, not the tensors): only those are fitted.
    `allocated_rows` (default `rows`): the rows the allocated constants are fitted on — every allocator's fit
    rows of the engine, for the Hugging Face engines. `reserve_only`: the RESERVE_* constants alone."""
    fit_rows = [r for r in rows if r["role"] == "fit"]
    alloc_rows = [r for r in (allocated_rows or rows) if r.get("alloc_role", r["role"]) == "fit"]
    label = f"{engine} ({allocator})"
    if not fit_rows:
        print(f"{label}: no fit rows; constants left as they are\n")
        return
    overrides = E.reserve_overrides(engine, allocator)
    reserve_only = reserve_only or overrides is not None
    reserve = [n for n in (overrides if overrides is not None else E.CONSTANTS[engine])
               if n.startswith("RESERVE_")]
    held = HELD | HELD_BY_ENGINE.get(engine, set())
    names = [] if reserve_only else [n for n in E.CONSTANTS[engine] if n not in held and n not in reserve]
    w = 0.0
    if names:
        least_squares(engine, names, alloc_rows, "peak_allocated", allocator=allocator)
        descend(engine, names, alloc_rows, "peak_allocated", allocator=allocator)
        w = polish([(table_of(engine, allocator, n), n) for n in names], lambda: worst(alloc_rows, "peak_allocated"))
    least_squares(engine, reserve, fit_rows, "peak_reserved", allocator=allocator)
    descend(engine, reserve, fit_rows, "peak_reserved", allocator=allocator)
    wr = polish([(table_of(engine, allocator, n), n) for n in reserve], lambda: worst(fit_rows, "peak_reserved"))
    k = E.constants(engine, allocator)
    print(f"{label}: fitted on {len(fit_rows)} points ({len(alloc_rows)} for allocated), worst penalised error "
          f"allocated {w * 100:.1f} %"
          f"{' (not refitted)' if not names else ''}, reserved {wr * 100:.1f} %")
    print("    " + ", ".join(f"{n}={v:.4g}" for n, v in k.items()) + "\n")


def fit_hf_path(rows: list[dict]) -> None:
    """Under expandable segments, after each engine's own fit: both engines' RESERVE_EXPANDABLE constants
    together, minimising the worst penalised error of what `--backend axolotl` reports — the larger of the two
    estimates — against the larger of the two measured peaks, on the fit points both engines measured."""
    pairs = hf_path(rows, "expandable", role="fit")
    if not pairs:
        return
    slots = [(E.RESERVE_EXPANDABLE[e], n) for e in E.HF_PATH for n in E.RESERVE_EXPANDABLE[e]]
    def objective() -> float:
        return max(penalty(max(predicted(r).reserved for r in both), measured)
                   for both, measured in _path_rows(rows, "fit"))
    descend_on(slots, objective)
    best = polish(slots, objective)
    print(f"Hugging Face path (expandable): both engines' reserve fitted together on {len(pairs)} fit points, "
          f"worst penalised error {best * 100:.1f} %")
    for e in E.HF_PATH:
        print(f"    {e}: " + ", ".join(f"{n}={v:.4g}" for n, v in E.RESERVE_EXPANDABLE[e].items()))
    print()


def groups(rows: list[dict]) -> list[tuple[str, str]]:
    """(engine, allocator) pairs present in `rows`, in a stable order."""
    return sorted({(r["engine"], r["allocator"]) for r in rows})


def table(rows: list[dict], role: str) -> list[str]:
    out = [f"| shape | engine | allocator | seq × batch | r | mts | ckpt | alloc measured | alloc est. | err "
           f"| reserved measured | reserved est. | err |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["role"] != role:
            continue
        e = predicted(r)
        ma, mr = r["peak_allocated"] / E.GiB, r["peak_reserved"] / E.GiB
        accum = f" × accum {r['accum']}" if r.get("accum", 1) > 1 else ""
        out.append(f"| {r['shape']} | {r['engine']} | {r['allocator']} | {r['seq']} × {r['micro']}{accum} | {r['r']} | "
                   f"{'yes' if r['modules_to_save'] else 'no'} | {'yes' if r['gradient_checkpointing'] else 'no'} | "
                   f"{ma:.2f} GiB | {e.peak / E.GiB:.2f} GiB | {(e.peak / E.GiB / ma - 1) * 100:+.1f} % | "
                   f"{mr:.2f} GiB | {e.reserved / E.GiB:.2f} GiB | {(e.reserved / E.GiB / mr - 1) * 100:+.1f} % |")
    return out


def _budget(errs: list[float]) -> tuple[int, str]:
    inside = sum(1 for x in errs if -0.05 <= x <= 0.10)
    ok = inside == len(errs)
    return inside, (f"reserved error {min(errs) * 100:+.1f} % … {max(errs) * 100:+.1f} %, {inside} of {len(errs)} "
                    f"inside: {'PASS' if ok else 'FAIL'} (±10 %, never more than 5 % under)")


def _path_rows(rows: list[dict], role: str, allocator: str = "expandable") -> list[tuple[list[dict], float]]:
    """(both engines' rows, the larger measured reserved peak) of each point of `role` that both Hugging Face
    engines measured under `allocator`."""
    by_point: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        if r["role"] == role and r["engine"] in E.HF_PATH and r["allocator"] == allocator:
            # the two engines of one point: one file, one run of it, the same config (accumulation too)
            key = (r["_where"].rsplit(":", 1)[0], r["_run"], r["shape"], r["seq"], r["micro"], r["r"],
                   r["modules_to_save"], r["gradient_checkpointing"], r.get("accum", 1))
            by_point.setdefault(key, {})[r["engine"]] = r
    return [(list(both.values()), max(r["peak_reserved"] for r in both.values()))
            for both in by_point.values() if len(both) == len(E.HF_PATH)]


def hf_path(rows: list[dict], allocator: str, role: str = "holdout") -> list[tuple[dict, float, float]]:
    """The Hugging Face path on the points of `role` both engines measured under `allocator`: (a row, the
    larger estimate, the larger measured reserved peak): what `--backend axolotl` estimates against the
    worse of the two ways the path is written."""
    return [(both[0], max(predicted(r).reserved for r in both), measured)
            for both, measured in _path_rows(rows, role, allocator)]


def verdict(rows: list[dict]) -> list[str]:
    """Issue #18's acceptance on the hold-out rows, per engine and allocator, and for the Hugging Face path."""
    lines = []
    for engine, allocator in groups(rows):
        held = [r for r in rows if (r["engine"], r["allocator"]) == (engine, allocator) and r["role"] == "holdout"]
        if not held:
            lines.append(f"- {engine} ({allocator}): no hold-out points")
            continue
        _, said = _budget([predicted(r).reserved / r["peak_reserved"] - 1 for r in held])
        lines.append(f"- {engine} ({allocator}): {len(held)} hold-out points, {said}")
    for allocator in E.ALLOCATORS:
        for role in ("holdout", "fit"):
            path = hf_path(rows, allocator, role)
            if path:
                _, said = _budget([est / measured - 1 for _, est, measured in path])
                lines.append(f"- Hugging Face path ({allocator}; the larger estimate against the larger measured): "
                             f"{len(path)} {'hold-out' if role == 'holdout' else 'fit'} points, {said}")
    return lines


def _closing(text: str, i: int) -> int:
    """The index of the ')' that closes the '(' just before `i`, comments skipped (a comment's '),' once ended
    the block early, and every constant after it kept its old value)."""
    depth = 1
    while depth:
        c = text[i]
        if c == "#":
            i = text.index("\n", i)
            continue
        depth += {"(": 1, ")": -1}.get(c, 0)
        i += 1
    return i - 1


def write(pairs: list[tuple[str, str]]) -> None:
    """Rewrite NAME=value in each (engine, allocator)'s dict(...) block of estimate.py."""
    text = ESTIMATE_PY.read_text()
    for engine, allocator in pairs:
        overrides = E.reserve_overrides(engine, allocator)
        source = overrides if overrides is not None else E.CONSTANTS[engine]
        section = text.index({"expandable": "RESERVE_EXPANDABLE: dict", "caching": "RESERVE_CACHING: dict"}[allocator]
                             if overrides is not None else "CONSTANTS: dict")
        start = text.index(f'"{engine}": dict(', section)
        end = _closing(text, start + len(f'"{engine}": dict('))
        block = text[start:end]
        for name, value in source.items():
            block = re.sub(rf"\b{name}=[-0-9.e+]+", f"{name}={value:.4g}", block)
        text = text[:start] + block + text[end:]
    ESTIMATE_PY.write_text(text)
    print(f"wrote {', '.join(f'{e} ({a})' for e, a in pairs)} into {ESTIMATE_PY}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--engine", action="append", help="only this engine (repeatable)")
    ap.add_argument("--no-fit", action="store_true")
    ap.add_argument("--allocator", choices=E.ALLOCATORS, help="only the points measured under this allocator "
                    "setting (expandable: expandable segments; caching: torch's default)")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--reserve-only", action="store_true", help="fit the RESERVE_* constants alone (the allocated "
                    "ones as they are)")
    ap.add_argument("--accept-unguarded", action="store_true",
                    help="also take points measured without calibrate_memory.py's guards (lines made without a GPU)")
    args = ap.parse_args(argv)
    ignored: list[str] = []
    rows = load_rows(args.files, args.accept_unguarded, ignored)
    if ignored:
        print(f"ignored {len(ignored)} measured point(s):")
        print("\n".join(f"- {why}" for why in ignored) + "\n")
    engines = sorted({r["engine"] for r in rows} & set(args.engine or E.ENGINES))
    if not engines:
        raise SystemExit("no usable measured points (kind: point, without error, clean by the guards) in "
                         + ", ".join(args.files))
    rows = [r for r in rows if r["engine"] in engines]
    if args.allocator:
        rows = [r for r in rows if r["allocator"] == args.allocator]
    pairs = groups(rows)
    if not args.no_fit:
        for engine, allocator in pairs:
            fit(engine, [r for r in rows if (r["engine"], r["allocator"]) == (engine, allocator)], allocator,
                [r for r in rows if r["engine"] == engine] if engine in E.HF_PATH else None, args.reserve_only)
        if all((e, "expandable") in pairs for e in E.HF_PATH):
            fit_hf_path(rows)
    for role in ("fit", "holdout"):
        print(f"### {role} points\n")
        print("\n".join(table(rows, role)) + "\n")
    print("\n".join(verdict(rows)))
    if args.write and not args.no_fit:
        write(pairs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
