"""bench/alloc_trace.py: the replay of a memory-history trace finds the reserved peak, the allocation that made
the allocator map more, and the free holes inside mapped memory then. The trace is written as torch's
_snapshot() gives one under expandable segments (segments and their blocks before, events after): torch with
CUDA is what this machine cannot have."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import alloc_trace as A  # noqa: E402

MiB = 1 << 20
BASE = 0x7F0000000000


def frames(name: str) -> list[dict]:
    return [{"filename": "/site/torch/autograd/graph.py", "line": 1, "name": "_engine_run_backward"},
            {"filename": f"/bench/{name}.py", "line": 7, "name": name}]


def test_the_reserved_peak_its_trigger_and_the_hole_a_freed_block_left():
    before = {"segments": [{"address": BASE, "total_size": 100 * MiB,
                            "blocks": [{"size": 60 * MiB, "state": "active_allocated"},
                                       {"size": 40 * MiB, "state": "inactive"}]}]}
    ev = [
        {"action": "alloc", "addr": BASE + 60 * MiB, "size": 40 * MiB, "frames": frames("logits")},
        {"action": "free_requested", "addr": BASE + 60 * MiB, "size": 40 * MiB, "frames": frames("loss_done")},
        {"action": "free_completed", "addr": BASE + 60 * MiB, "size": 40 * MiB},
        # 50 MiB does not fit the 40 MiB hole: the segment grows by 60 (20 MiB pages), the hole stays
        {"action": "segment_map", "addr": BASE + 100 * MiB, "size": 60 * MiB},
        {"action": "alloc", "addr": BASE + 100 * MiB, "size": 50 * MiB, "frames": frames("grad")},
        {"action": "free_requested", "addr": BASE + 100 * MiB, "size": 50 * MiB, "frames": frames("step")},
        {"action": "free_completed", "addr": BASE + 100 * MiB, "size": 50 * MiB},
        {"action": "segment_unmap", "addr": BASE + 100 * MiB, "size": 60 * MiB},
    ]
    s = A.summarize(before, {"device_traces": [ev]})
    peak = s["reserved_peak"]
    assert peak["event"] == 3 and peak["reserved_gib"] == round(160 * MiB / A.GiB, 3)
    assert peak["allocated_gib"] == round(110 * MiB / A.GiB, 3)         # once the 50 MiB block is in
    assert peak["trigger"]["size_gib"] == round(50 * MiB / A.GiB, 4)
    assert peak["trigger"]["where"][0].startswith("bench/grad.py:7")   # torch's own frames skipped
    sizes = [h["size_gib"] for h in peak["holes"]]
    assert sizes == [round(40 * MiB / A.GiB, 4), round(10 * MiB / A.GiB, 4)]  # the freed logits; the page's tail
    assert peak["slack_gib"] == round(50 * MiB / A.GiB, 3)
    assert peak["holes"][0]["freed_at"][0].startswith("bench/loss_done.py")
    assert s["allocated_peak"]["allocated_gib"] == round(110 * MiB / A.GiB, 3)
    assert s["allocated_peak"]["slack_gib"] == round(50 * MiB / A.GiB, 3)
    assert [h["size_gib"] for h in s["allocated_peak"]["holes"]] == sizes
    assert s["allocated_peak"]["blocks_over_100mib"] == []
    assert s["allocated_peak"]["largest"][0]["size_gib"] == round(60 * MiB / A.GiB, 4)
    assert s["replayed_end"] == {"reserved": 100 * MiB, "allocated": 60 * MiB}


def test_an_empty_trace_says_so():
    assert A.summarize({"segments": []}, {"device_traces": [[]]}) == {"events": 0}


def test_a_free_counts_when_requested_and_frees_its_range_when_completed():
    """torch lowers its allocated counter at free_requested; the block's range is reused only after
    free_completed (its streams done): a hole appears then, not before."""
    before = {"segments": [{"address": BASE, "total_size": 80 * MiB, "blocks": [{"size": 80 * MiB, "state": "inactive"}]}]}
    ev = [
        {"action": "alloc", "addr": BASE, "size": 40 * MiB},
        {"action": "alloc", "addr": BASE + 40 * MiB, "size": 40 * MiB},
        {"action": "free_requested", "addr": BASE, "size": 40 * MiB},
        {"action": "segment_map", "addr": BASE + 80 * MiB, "size": 20 * MiB},   # the freed range not yet reusable
        {"action": "alloc", "addr": BASE + 80 * MiB, "size": 20 * MiB},
        {"action": "free_completed", "addr": BASE, "size": 40 * MiB},
    ]
    states = [(r, a) for _, r, a, *_ in A.replay(before, ev)]
    assert states[2] == (80 * MiB, 40 * MiB)           # requested: counted free at once
    assert states[-1] == (100 * MiB, 60 * MiB)         # completed: not counted twice
    s = A.summarize(before, {"device_traces": [ev]})
    # by torch's counters 40 MiB are slack at the mapping, but no hole: the freed range was still pending
    assert s["reserved_peak"]["slack_gib"] == round(40 * MiB / A.GiB, 3) and s["reserved_peak"]["holes"] == []
    assert "reserved_peak_before_recording" not in s
