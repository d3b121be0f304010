#!/usr/bin/env python3
"""The training table of issue 17 from the JSON lines bench/train_table_run.py writes: the plain loop, the
plain loop + Liger kernels and envdoctor's runner on each config, with tokens/s, peak allocated and peak
reserved, the runner/plain ratios against the targets, and the loss-curve agreement.

    python bench/train_table.py FILES...      (lines of several calls are merged; a later line for the same
                                               config and engine replaces an earlier one)

No torch here: it reads numbers and prints markdown.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

GIB = 1024 ** 3
ENGINE_ORDER = ("plain", "liger", "runner")
ENGINE_NAMES = {"plain": "plain loop", "liger": "plain loop + Liger kernels", "runner": "envdoctor runner"}
CONFIG_NAMES = {"A": "r=64, all seven projections", "B": "seed config (+ modules_to_save: embed_tokens, lm_head)"}
# Issue 17's acceptance: the runner against the plain loop.
SPEED_TARGET, RESERVED_TARGET = 2.0, 0.5
MIN_STEPS, MEAN_DIFF_PCT, STEP_DIFF_PCT = 50, 1.0, 3.0


class TableError(ValueError):
    """A results file that cannot be read: the message names the file and line."""


def load_lines(paths) -> dict[tuple[str, str], dict]:
    """{(config, engine): record} from JSON-lines files; blank lines are skipped."""
    out: dict[tuple[str, str], dict] = {}
    for path in paths:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise TableError(f"{path}: cannot be read ({exc.strerror})") from None
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TableError(f"{path}, line {number}: not JSON ({exc.msg})") from None
            if not isinstance(rec, dict) or not {"config", "engine"} <= rec.keys():
                raise TableError(f"{path}, line {number}: expected an object with 'config' and 'engine'")
            out[(str(rec["config"]), str(rec["engine"]))] = rec
    return out


def ratio(num, den) -> float | None:
    return num / den if isinstance(num, (int, float)) and isinstance(den, (int, float)) and den else None


def compare_losses(plain: list[float], other: list[float]) -> dict | None:
    """Per-step agreement over the steps both ran (the same token batches, step by step): mean losses, the
    relative difference of the means and the largest relative difference of one step, in percent."""
    n = min(len(plain or []), len(other or []))
    if n == 0:
        return None
    p, o = plain[:n], other[:n]
    mean_p, mean_o = sum(p) / n, sum(o) / n
    diffs = [abs(b - a) / abs(a) * 100 if a else float("inf") for a, b in zip(p, o)]
    worst = max(range(n), key=diffs.__getitem__)
    mean_diff = abs(mean_o - mean_p) / abs(mean_p) * 100 if mean_p else float("inf")
    return dict(steps=n, mean_plain=mean_p, mean_other=mean_o, mean_diff_pct=mean_diff,
                max_step_diff_pct=diffs[worst], worst_step=worst + 1,
                ok=n >= MIN_STEPS and mean_diff <= MEAN_DIFF_PCT and diffs[worst] <= STEP_DIFF_PCT)


def _measured(rec: dict | None) -> bool:
    return bool(rec) and not rec.get("skipped") and not rec.get("error") and rec.get("tokens_per_s") is not None


def _cell(value, base, fmt: str, scale: float = 1.0, unit: str = "") -> str:
    if not isinstance(value, (int, float)) or value <= 0:  # 0: no CUDA allocator to ask (a CPU run)
        return "—"
    text = format(value / scale, fmt) + unit
    r = ratio(value, base)
    return f"{text} ({r:.2f}×)" if r is not None else text


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def render(records: dict[tuple[str, str], dict]) -> str:
    """The markdown: one table of speed and memory, the targets, the loss agreement, then what was skipped."""
    if not records:
        return "no results"
    measured = [r for r in records.values() if _measured(r)] or list(records.values())
    any_rec = measured[0]
    lines = []
    setup = any_rec.get("setup", {})
    head = [f"{k}={v}" for k, v in setup.items()]
    lines.append("Training table (issue 17): " + ", ".join(
        x for x in [any_rec.get("machine", ""), any_rec.get("date", ""), *head] if x))
    lines += ["", "| config | engine | tokens/s | peak allocated | peak reserved | steps timed | mean loss (steps) |",
              "|---|---|---|---|---|---|---|"]
    configs = sorted({c for c, _ in records})
    footnotes, targets, numerics = [], [], []
    for config in configs:
        plain = records.get((config, "plain"))
        base = plain if _measured(plain) else {}
        engines = [e for e in ENGINE_ORDER if (config, e) in records]
        engines += sorted(e for c, e in records if c == config and e not in ENGINE_ORDER)
        for engine in engines:
            rec = records[(config, engine)]
            name = ENGINE_NAMES.get(engine, engine)
            if not _measured(rec):
                why = rec.get("skipped") or rec.get("error") or "no timed step"
                footnotes.append(f"{config} / {name}: {why}")
                lines.append(f"| {config} | {name} | not run (see below) | — | — | — | — |")
                continue
            own = engine == "plain"
            losses = rec.get("losses") or []
            lines.append("| " + " | ".join([
                config, name,
                _cell(rec["tokens_per_s"], None if own else base.get("tokens_per_s"), ",.0f"),
                _cell(rec.get("peak_allocated"), None if own else base.get("peak_allocated"), ".2f", GIB, " GiB"),
                _cell(rec.get("peak_reserved"), None if own else base.get("peak_reserved"), ".2f", GIB, " GiB"),
                str(rec.get("timed_steps", max(len(rec.get("step_seconds") or []) - 1, 0))),
                f"{sum(losses) / len(losses):.4f} ({len(losses)})" if losses else "—"]) + " |")
            if rec.get("steps", 0) < rec.get("steps_requested", 0):
                footnotes.append(f"{config} / {name}: {rec['steps']} of {rec['steps_requested']} steps "
                                 f"({rec.get('stopped') or 'stopped early'})")
            if rec.get("paged_bytes"):
                footnotes.append(f"{config} / {name}: paged optimizer state {rec['paged_bytes'] / GIB:.2f} GiB "
                                 "(CUDA managed memory: in neither peak)")
            for note in rec.get("notes") or []:
                footnotes.append(f"{config} / {name}: {note}")
            if own:
                continue
            speed = ratio(rec["tokens_per_s"], base.get("tokens_per_s"))
            reserved = ratio(rec.get("peak_reserved"), base.get("peak_reserved"))
            if engine == "runner" and speed is not None:
                res = (f"reserved {reserved:.2f}× {_mark(reserved <= RESERVED_TARGET)} (≤ {RESERVED_TARGET}×)"
                       if reserved is not None else "reserved: not measured on this device")
                allocated = ratio(rec.get("peak_allocated"), base.get("peak_allocated"))
                alloc = f", allocated {allocated:.2f}×" if allocated is not None else ""
                targets.append(f"- {config}: tokens/s {speed:.2f}× {_mark(speed >= SPEED_TARGET)} "
                               f"(≥ {SPEED_TARGET}×), {res}{alloc}")
            cmp = compare_losses(base.get("losses") or [], losses)
            if cmp:
                numerics.append("| " + " | ".join([
                    config, f"{name} vs plain loop", str(cmp["steps"]),
                    f"{base['losses'][0]:.3f} → {base['losses'][cmp['steps'] - 1]:.3f}", f"{cmp['mean_plain']:.4f}",
                    f"{cmp['mean_other']:.4f}", f"{cmp['mean_diff_pct']:.3f} %",
                    f"{cmp['max_step_diff_pct']:.3f} % (step {cmp['worst_step']})",
                    _mark(cmp["ok"]) + ("" if cmp["steps"] >= MIN_STEPS else f" (< {MIN_STEPS} steps)")]) + " |")
    if targets:
        lines += ["", f"Runner / plain loop (targets: ≥ {SPEED_TARGET}× tokens/s, ≤ {RESERVED_TARGET}× peak reserved):",
                  *targets]
    if numerics:
        lines += ["", f"Loss agreement, step by step on the same token batches (targets: ≥ {MIN_STEPS} steps, mean "
                      f"≤ {MEAN_DIFF_PCT} %, every step ≤ {STEP_DIFF_PCT} %):", "",
                  "| config | compared | steps | plain loss, first → last | mean loss, plain | mean loss, other | "
                  "mean diff | largest step diff | ok |",
                  "|---|---|---|---|---|---|---|---|---|", *numerics]
    used = [c for c in configs if c in CONFIG_NAMES]
    if used:
        lines += ["", "Configs: " + "; ".join(f"{c} = {CONFIG_NAMES[c]}" for c in used) + "."]
    if footnotes:
        lines += ["", "Notes:", *(f"- {f}" for f in footnotes)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    try:
        records = load_lines(argv)
    except TableError as exc:
        print(f"train_table: {exc}", file=sys.stderr)
        return 2
    print(render(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
