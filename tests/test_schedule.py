"""The data-parallel schedule (train/envdoctor_runner/schedule.py): pure arithmetic, no torch.distributed."""

import sys
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from envdoctor.assets import asset

sys.path.insert(0, str(asset("train")))
from envdoctor_runner import schedule  # noqa: E402


def test_the_hang_case_34_chunks_micro_2_accum_4_on_2_ranks():
    # 17 micro batches: 4 full steps and one of a single micro batch, on rank 0 only; rank 1 runs a dummy.
    plans = [schedule.epoch_plan(17, 4, r, 2) for r in (0, 1)]
    assert [len(p) for p in plans] == [5, 5]
    assert [[q.index for q in s] for s in plans[0]] == [[0, 2], [4, 6], [8, 10], [12, 14], [16]]
    assert [[q.index for q in s] for s in plans[1]] == [[1, 3], [5, 7], [9, 11], [13, 15], [16]]
    assert plans[0][-1][0].weight == 2.0 and plans[1][-1][0] == schedule.Pass(16, 0.0, False)


def test_fewer_micro_batches_than_ranks():
    plans = [schedule.epoch_plan(1, 4, r, 3) for r in range(3)]
    assert [[(q.index, q.real) for q in p[0]] for p in plans] == [[(0, True)], [(0, False)], [(0, False)]]
    assert plans[0][0][0].weight == 3.0


@given(st.integers(1, 60), st.integers(1, 9), st.integers(1, 8))
def test_every_rank_agrees_and_the_mean_is_one_process_mean(n_micro, accum, world):
    plans = [schedule.epoch_plan(n_micro, accum, r, world) for r in range(world)]
    one = schedule.steps(n_micro, accum)
    for s, step in enumerate(one):
        runs = [p[s] for p in plans]
        assert len({len(r) for r in runs}) == 1  # same number of passes (collectives) on every rank
        real = sorted(q.index for r in runs for q in r if q.real)
        assert real == step  # each micro batch exactly once
        # DDP averages over ranks: sum over ranks of weights / world = 1 / len(step) for every micro batch.
        for r in runs:
            for q in r:
                assert Fraction(q.weight).limit_denominator(1000) == (Fraction(world, len(step)) if q.real else 0)
    assert sum(len(s) for s in one) == n_micro and all(len(s) == accum for s in one[:-1])
