"""Where torch's allocator slack comes from: replay a memory-history trace (torch.cuda.memory._snapshot() with
_record_memory_history on) and describe the moment the reserved peak was set.

    summary = summarize(before, after)   # before: _snapshot() taken before recording started; after: at the end

Reserved is replayed from the segments `before` holds plus every segment_alloc / segment_map (expandable
segments map pages into a segment as it grows) and segment_free / segment_unmap event; allocated from the
active blocks `before` holds plus alloc / free_completed events. At the event that set the reserved peak the
summary lists the allocation that made the allocator map more (its size and where it was made), the largest
free holes inside mapped memory once it has its block (the slack: reserved − allocated) and where each hole's
first block was freed. At the allocated peak — under expandable segments the reserved figure is mostly set
there, later mappings add little — the slack, the largest live blocks and where they were made, and the holes.
Pure Python: runs on the device right after a point (bench/calibrate_memory.py --trace) or here on a saved
snapshot.
"""

from __future__ import annotations

import bisect

GiB = 1024 ** 3


def _where(frames: list[dict] | None, depth: int = 4) -> list[str]:
    """The innermost frames outside torch's own files (else the innermost), as 'dir/file:line name'."""
    frames = frames or []
    mine = [f for f in frames if "/torch/" not in f.get("filename", "")] or frames
    return [f"{'/'.join(f.get('filename', '?').split('/')[-2:])}:{f.get('line', 0)} {f.get('name', '')}"
            for f in mine[:depth]]


def _initial(before: dict) -> tuple[list[list[int]], dict[int, tuple[int, list]]]:
    mapped, live = [], {}
    for seg in before.get("segments", []):
        mapped.append([seg["address"], seg["address"] + seg["total_size"]])
        addr = seg["address"]
        for block in seg.get("blocks", []):
            if block.get("state", "").startswith("active"):
                live[addr] = (block["size"], block.get("frames") or [])
            addr += block["size"]
    return _merge(mapped), live


def _merge(intervals: list[list[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _cut(intervals: list[list[int]], a: int, b: int) -> list[list[int]]:
    out = []
    for x, y in intervals:
        if y <= a or x >= b:
            out.append([x, y])
            continue
        if x < a:
            out.append([x, a])
        if y > b:
            out.append([b, y])
    return out


def _holes(mapped: list[list[int]], live: dict[int, tuple[int, list]]) -> list[tuple[int, int]]:
    """(start, size) of every free range inside mapped memory."""
    starts = sorted(live)
    holes = []
    for a, b in mapped:
        i = bisect.bisect_left(starts, a)
        cur = a
        while i < len(starts) and starts[i] < b:
            s = starts[i]
            if s > cur:
                holes.append((cur, s - cur))
            cur = max(cur, s + live[s][0])
            i += 1
        if cur < b:
            holes.append((cur, b - cur))
    return holes


def replay(before: dict, events: list[dict], stop: int | None = None):
    """Replay `events` (one device's trace) up to index `stop` (None: all). Yields, after each event, (index,
    reserved, allocated, mapped ranges, live blocks {addr: (size, frames)}, {addr: frames of its last free})."""
    mapped, live = _initial(before)
    reserved = sum(b - a for a, b in mapped)
    allocated = sum(size for size, _ in live.values())
    freed: dict[int, list] = {}
    pending: set[int] = set()
    for i, ev in enumerate(events):
        if stop is not None and i > stop:
            break
        action, addr, size = ev.get("action"), ev.get("addr", 0), ev.get("size", 0)
        if action in ("segment_alloc", "segment_map"):
            mapped = _merge(mapped + [[addr, addr + size]])
            reserved += size
        elif action in ("segment_free", "segment_unmap"):
            mapped = _cut(mapped, addr, addr + size)
            reserved -= size
        elif action == "alloc":
            live[addr] = (size, ev.get("frames") or [])
            allocated += size
        elif action == "free_requested":  # torch's allocated counter drops here; the block's range is reused
            freed[addr] = ev.get("frames") or []  # only once its streams are done (free_completed)
            if addr in live and addr not in pending:
                allocated -= live[addr][0]
                pending.add(addr)
        elif action == "free_completed":
            if addr in live:
                size = live.pop(addr)[0]
                if addr in pending:
                    pending.discard(addr)
                else:
                    allocated -= size
        yield i, reserved, allocated, mapped, live, freed


def summarize(before: dict, after: dict, device: int = 0, top: int = 6) -> dict:
    """The reserved and allocated peaks of the recorded span and what made them (module docstring)."""
    traces = after.get("device_traces") or []
    events = traces[device] if device < len(traces) else []
    best_r = best_a = end = (-1, 0, 0)
    for i, reserved, allocated, *_ in replay(before, events):
        if reserved > best_r[1]:
            best_r = (i, reserved, allocated)
        if allocated > best_a[2]:
            best_a = (i, reserved, allocated)
        end = (i, reserved, allocated)
    out: dict = {"events": len(events)}
    if best_r[0] >= 0 and best_r[1] <= sum(seg["total_size"] for seg in before.get("segments", [])):
        out["reserved_peak_before_recording"] = True  # no event raised it: there is no trigger to name
    if best_r[0] < 0:
        return out
    out["replayed_end"] = dict(reserved=end[1], allocated=end[2])  # to compare with torch's own counters
    # the state once the allocation that made the allocator map more has its block
    at, trigger = next(((j, ev) for j, ev in enumerate(events[best_r[0] + 1:], best_r[0] + 1)
                        if ev.get("action") == "alloc"), (best_r[0], {}))
    state = None
    for state in replay(before, events, at):
        pass
    _, reserved, allocated, mapped, live, freed = state
    holes = sorted(_holes(mapped, live), key=lambda h: -h[1])
    out["reserved_peak"] = dict(
        event=best_r[0], reserved_gib=round(reserved / GiB, 3), allocated_gib=round(allocated / GiB, 3),
        slack_gib=round((reserved - allocated) / GiB, 3),
        trigger=dict(size_gib=round(trigger.get("size", 0) / GiB, 4), where=_where(trigger.get("frames"))),
        holes=[dict(size_gib=round(size / GiB, 4), freed_at=_where(freed.get(start), 3)) for start, size in holes[:top]],
        holes_count=len(holes), holes_under_20mib_gib=round(sum(s for _, s in holes if s < 20 << 20) / GiB, 3))
    for state in replay(before, events, best_a[0]):
        pass
    _, reserved, allocated, mapped, live, freed = state
    biggest = sorted(live.items(), key=lambda kv: -kv[1][0])[:top]
    holes = sorted(_holes(mapped, live), key=lambda h: -h[1])
    out["allocated_peak"] = dict(
        event=best_a[0], reserved_gib=round(reserved / GiB, 3), allocated_gib=round(allocated / GiB, 3),
        slack_gib=round((reserved - allocated) / GiB, 3),
        largest=[dict(size_gib=round(size / GiB, 4), where=_where(frames, 3)) for _, (size, frames) in biggest],
        holes=[dict(size_gib=round(size / GiB, 4), freed_at=_where(freed.get(start), 3)) for start, size in holes[:top]],
        blocks_over_100mib=sorted((round(size / GiB, 3) for size, _ in live.values() if size > 100 << 20), reverse=True))
    return out
