"""Which micro batches each process runs for each optimizer step: pure arithmetic, computed identically
on every rank from (number of micro batches, accumulation, world size), so every rank agrees on the number
of optimizer steps and of forward/backward passes whatever the data size.

One process groups micro batches 0..n-1 into optimizer steps of `accum` (the last one may be short) and
averages the per-micro-batch mean losses over the micro batches in the step. N processes keep exactly that:
each step's micro batches are dealt round-robin over the ranks, every rank runs the same number of passes
(ceil(len(step) / N); a rank short of one repeats a real micro batch with weight 0, so collectives that run
per forward or per backward - FSDP's gathers, DDP's all-reduce - match), and each real pass is weighted
N / len(step): DDP and FSDP average gradients over the N ranks, so the averaged gradient is the sum of the
step's micro-batch gradients over len(step), as one process computes it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pass:
    index: int      # the micro batch to run (a dummy pass repeats a real one)
    weight: float   # multiplies its loss before backward; 0 for a dummy
    real: bool      # counts towards the logged loss and the tokens


def steps(n_micro: int, accum: int) -> list[list[int]]:
    """The global micro-batch indices of each optimizer step: one process's grouping."""
    if accum < 1:
        raise ValueError(f"accumulation must be at least 1, not {accum}")
    return [list(range(i, min(i + accum, n_micro))) for i in range(0, n_micro, accum)]


def passes(step: list[int], rank: int, world: int) -> list[Pass]:
    """This rank's forward/backward passes for one optimizer step (the same count on every rank)."""
    if not step:
        raise ValueError("an optimizer step needs at least one micro batch")
    mine = step[rank::world]
    count = -(-len(step) // world)
    weight = world / len(step)
    return [Pass(i, weight, True) for i in mine] + [Pass(step[0], 0.0, False)] * (count - len(mine))


def epoch_plan(n_micro: int, accum: int, rank: int, world: int) -> list[list[Pass]]:
    return [passes(s, rank, world) for s in steps(n_micro, accum)]
