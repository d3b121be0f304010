"""The training table's printer (bench/train_table.py) on synthetic JSON lines: lines of several calls merge,
ratios are against the same config's plain loop, the targets and the loss agreement are judged as issue 17
states them, and a bad file is a clear message, not a traceback. No torch: the printer only reads numbers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import train_table as T  # noqa: E402

GIB = 1024 ** 3


def rec(engine, config, tps, alloc_gib, reserved_gib, losses, **extra):
    return dict(engine=engine, config=config, tokens_per_s=tps, peak_allocated=alloc_gib * GIB,
                peak_reserved=reserved_gib * GIB, losses=losses, step_seconds=[1.0] * len(losses),
                steps=len(losses), steps_requested=len(losses), machine="NVIDIA H200", date="2026-11-30",
                setup=dict(shape="llama-3.1-8b", seq=2048), **extra)


def write(path: Path, records) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    return path


def test_compare_losses_judges_mean_and_worst_step():
    plain = [10.0] * 50
    close = [10.05] * 49 + [10.2]  # mean +0.53 %, worst step 2 %
    cmp = T.compare_losses(plain, close)
    assert cmp["steps"] == 50 and cmp["worst_step"] == 50
    assert cmp["mean_diff_pct"] == pytest.approx(0.53)
    assert cmp["max_step_diff_pct"] == pytest.approx(2.0)
    assert cmp["ok"]
    assert not T.compare_losses(plain, [10.0] * 49 + [10.31])["ok"]       # one step 3.1 % off
    assert not T.compare_losses(plain, [10.11] * 50)["ok"]                # mean 1.1 % off
    short = T.compare_losses(plain[:49], plain[:49])                      # agreeing, but < 50 steps
    assert short["mean_diff_pct"] == 0 and not short["ok"]
    assert T.compare_losses(plain, [10.0] * 60)["steps"] == 50            # over the steps both ran
    assert T.compare_losses([], [1.0]) is None


def test_render_merges_calls_and_prints_ratios_targets_and_agreement(tmp_path):
    loss = [11.0 - 0.01 * k for k in range(50)]
    part1 = write(tmp_path / "p1.jsonl", [
        rec("plain", "A", 2600.0, 18.5, 20.0, loss),
        rec("runner", "A", 999.0, 1.0, 1.0, loss),                        # replaced by the line below
        rec("runner", "A", 5200.0, 9.0, 9.5, [x * 1.002 for x in loss], paged_bytes=GIB // 2),
        rec("liger", "A", 2700.0, 15.1, 16.0, []),
    ])
    part2 = write(tmp_path / "p2.jsonl", [
        rec("plain", "B", 2550.0, 26.4, 30.0, loss),
        rec("runner", "B", 3550.0, 21.5, 22.0, [x * 1.04 for x in loss]),
        dict(engine="liger", config="B", error="exit status -9"),
    ])
    records = T.load_lines([part1, part2])
    assert len(records) == 6 and records[("A", "runner")]["tokens_per_s"] == 5200.0
    out = T.render(records)
    assert "| A | envdoctor runner | 5,200 (2.00×) | 9.00 GiB (0.49×) | 9.50 GiB (0.47×) | 49 |" in out
    assert "| A | plain loop + Liger kernels | 2,700 (1.04×) |" in out
    assert "| A | plain loop | 2,600 | 18.50 GiB | 20.00 GiB |" in out  # the baseline: no ratio
    assert "- A: tokens/s 2.00× ✓ (≥ 2.0×), reserved 0.47× ✓ (≤ 0.5×), allocated 0.49×" in out
    assert "- B: tokens/s 1.39× ✗ (≥ 2.0×), reserved 0.73× ✗ (≤ 0.5×)" in out
    assert "| A | envdoctor runner vs plain loop | 50 | 11.000 → 10.510 |" in out
    assert "| 0.200 % | 0.200 % (step " in out and "| ✓ |" in out  # every step 0.2 % off
    assert "| B | envdoctor runner vs plain loop | 50 |" in out and "| 4.000 % | 4.000 % (step " in out and "| ✗ |" in out
    assert "| B | plain loop + Liger kernels | not run (see below) |" in out
    assert "- B / plain loop + Liger kernels: exit status -9" in out
    assert "- A / envdoctor runner: paged optimizer state 0.50 GiB (CUDA managed memory: in neither peak)" in out
    assert out.startswith("Training table (issue 17): NVIDIA H200, 2026-11-30, shape=llama-3.1-8b, seq=2048")


def test_render_cpu_rows_skipped_liger_and_early_stop(tmp_path):
    loss = [6.0] * 10
    cpu = rec("plain", "A", 1000.0, 0, 0, loss)               # no CUDA allocator: peaks 0
    runner = rec("runner", "A", 900.0, 0, 0, loss[:8], notes=["optimizer paged_adamw_8bit needs a CUDA GPU"])
    runner.update(steps_requested=10, stopped="its share of --budget-s ran out")
    liger = dict(engine="liger", config="A", skipped="Liger's kernels are Triton: CUDA only, not run on this device")
    out = T.render(T.load_lines([write(tmp_path / "c.jsonl", [cpu, runner, liger])]))
    assert "| A | envdoctor runner | 900 (0.90×) | — | — |" in out
    assert "reserved: not measured on this device" in out
    assert "- A / envdoctor runner: 8 of 10 steps (its share of --budget-s ran out)" in out
    assert "- A / plain loop + Liger kernels: Liger's kernels are Triton" in out
    assert "(< 50 steps)" in out
    assert "paged optimizer state" not in out  # none on a CPU


def test_bad_files_are_named_with_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rec("plain", "A", 1.0, 1, 1, [1.0])) + "\n{not json\n")
    assert T.main([str(bad)]) == 2
    assert f"{bad}, line 2: not JSON" in capsys.readouterr().err
    bad.write_text('[1, 2]\n')
    assert T.main([str(bad)]) == 2
    assert "line 1: expected an object with 'config' and 'engine'" in capsys.readouterr().err
    assert T.main([str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl: cannot be read" in capsys.readouterr().err
    assert T.main([]) == 2
