"""`envdoctor report merge A.json B.json …`: reports collected on many nodes (srun, pdsh, torchrun), one
table of what differs between them: driver, GPUs, torch build, Python, every package version, failures.

A file may hold one JSON report, or many lines of `pdsh` output (`node01: {…}`)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from envdoctor import textfile
from envdoctor.errors import UsageError
from envdoctor.model import failing_statuses

BAD = {s.value for s in failing_statuses()}  # as the report files spell them


@dataclass
class Node:
    name: str
    source: str
    values: dict[str, str] = field(default_factory=dict)


def _reports(path: Path) -> list[tuple[str | None, dict]]:
    try:
        text = textfile.read(path, "an envdoctor JSON report or pdsh output")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror})")
    except textfile.NotText as exc:
        raise UsageError(str(exc))
    try:
        return [(None, json.loads(text))]
    except (ValueError, RecursionError):
        pass
    found = []
    for n, line in enumerate(text.splitlines(), 1):  # pdsh: "host: {json}"
        host, sep, rest = line.partition(": ")
        if not sep or not rest.lstrip().startswith("{"):
            continue
        try:
            found.append((host.strip(), json.loads(rest)))
        except (ValueError, RecursionError) as exc:
            raise UsageError(f"{path}:{n}: not a JSON report after '{host}:' ({exc})")
    if not found:
        raise UsageError(f"{path}: neither a JSON report (envdoctor check --json) nor pdsh lines 'host: {{…}}'")
    return found


def _dict(v) -> dict:
    return v if isinstance(v, dict) else {}


def _list(v) -> list:
    return v if isinstance(v, list) else []


def check_shape(report, where: str) -> None:
    """A report whose top-level parts have the wrong types is a usage error naming the key; deeper values
    of the wrong type are read as missing (a report from an older or newer envdoctor still compares)."""
    if not isinstance(report, dict) or "results" not in report:
        raise UsageError(f"{where}: not an envdoctor JSON report (no 'results'); write them with "
                         "`envdoctor check --json`")
    if not isinstance(report["results"], list) or not all(isinstance(r, dict) for r in report["results"]):
        raise UsageError(f"{where}: results: expected a list of check results (objects), got "
                         f"{_kind(report['results'])}")
    for key in ("facts", "node"):
        if report.get(key) is not None and not isinstance(report[key], dict):
            raise UsageError(f"{where}: {key}: expected an object, got {_kind(report[key])}")


def _kind(v) -> str:
    if isinstance(v, list):
        return "a list" + (f" holding {type(next(x for x in v if not isinstance(x, dict))).__name__}"
                           if any(not isinstance(x, dict) for x in v) else "")
    return type(v).__name__


def _text(v) -> str | None:
    return None if v is None or isinstance(v, (dict, list)) else str(v)


def flatten(report: dict) -> dict[str, str]:
    """The comparable facts of one report, as key → value strings."""
    f = _dict(report.get("facts"))
    gpu, torch, py, tk = (_dict(f.get(k)) for k in ("gpu", "torch", "python", "toolkit"))
    gpus = Counter(f"{g.get('name')} (sm_{''.join(map(str, _list(g.get('cc'))))})"
                   for g in _list(gpu.get("gpus")) if isinstance(g, dict))
    out = {"envdoctor": _text(report.get("envdoctor_version")), "driver": _text(gpu.get("driver")),
           "gpus": ", ".join(f"{n} × {name}" for name, n in sorted(gpus.items())) or "none",
           "python": _text(py.get("version_string")),
           "torch": _text(torch.get("version")) if torch.get("installed") else "not installed",
           "torch cuda": _text(torch.get("cuda")), "glibc": _text(py.get("glibc")),
           "nvcc": ", ".join(sorted({str(t.get("version")) for t in _list(tk.get("nvccs"))
                                     if isinstance(t, dict) and _text(t.get("version"))})) or None}
    for d in _list(py.get("distributions")):
        if isinstance(d, dict) and _text(d.get("name")):
            out[f"pkg {d['name']}"] = _text(d.get("version"))
    for r in _list(report.get("results")):
        if isinstance(r, dict) and isinstance(r.get("status"), str) and r["status"] in BAD:
            out[f"check {r.get('id')}"] = f"{r['status']}: {_text(r.get('message')) or ''}"
    return {k: str(v) for k, v in out.items() if v is not None}


def load(paths: list[str]) -> list[Node]:
    nodes: list[Node] = []
    for p in paths:
        for host, report in _reports(Path(p)):
            check_shape(report, p if host is None else f"{p} ({host})")
            node = report.get("node") or {}
            name = host or _text(node.get("slurm_node")) or _text(node.get("hostname")) or Path(p).stem
            nodes.append(Node(name, p, flatten(report)))
    seen = Counter(n.name for n in nodes)
    index: Counter = Counter()
    for n in nodes:  # two reports from one host (two tasks per node): tell them apart
        if seen[n.name] > 1:
            index[n.name] += 1
            n.name = f"{n.name}#{index[n.name]}"
    return nodes


def differences(nodes: list[Node]) -> tuple[list[str], int]:
    """(keys whose value is not the same on every node, number of keys that agree). A key missing on a
    node counts as a difference ("—"); failing checks always show."""
    keys = sorted({k for n in nodes for k in n.values}, key=lambda k: (k.startswith("pkg "), k.startswith("check "), k))
    differ = [k for k in keys if len({n.values.get(k, "—") for n in nodes}) > 1 or k.startswith("check ")]
    return differ, len(keys) - len(differ)


def _widths(natural: list[int], least: list[int], room: int | None) -> list[int]:
    """Column widths that fit `room`: every column its natural width when they fit; otherwise the room is
    shared out, narrow columns keeping their natural width and the rest an equal share (never under
    `least`: a table wider than the terminal beats an unreadable one)."""
    if room is None or sum(natural) <= room:
        return natural
    widths = list(natural)
    wide = set(range(len(natural)))
    while wide:
        share = (room - sum(widths[i] for i in range(len(widths)) if i not in wide)) // len(wide)
        settled = {i for i in wide if natural[i] <= share or least[i] >= share}
        for i in settled:  # narrow enough already, or never narrower than its least
            widths[i] = min(natural[i], max(least[i], share))
        if not settled:
            for i in wide:
                widths[i] = share
            break
        wide -= settled
    return widths


def render(nodes: list[Node], out, width: int | None = 0) -> int:
    """The table of differences. Values are shown whole: a cell too wide for its column wraps at spaces onto
    more lines of its row. `width`: 0 asks the terminal ($COLUMNS); None (a pipe) never wraps."""
    import os

    from envdoctor.report.text import terminal_width, wrap
    if width == 0:
        width = terminal_width(out, os.environ)
    differ, same = differences(nodes)
    failing = sorted({n.name for n in nodes for k in n.values if k.startswith("check ")})
    out.write(f"{len(nodes)} node(s): {', '.join(n.name for n in nodes)}\n")
    if not differ:
        out.write(f"all {same} compared facts are identical; no failing checks\n")
        return 0
    names = [n.name for n in nodes]
    keyw = max(len(k) for k in differ) + 2
    natural = [max([len(name)] + [len(node.values.get(k, "—")) for k in differ]) for name, node in zip(names, nodes)]
    least = [max(len(name), 12) for name in names]
    cols = _widths(natural, least, None if width is None else width - keyw - 2 * len(nodes))
    out.write(f"{'':<{keyw}}" + "  ".join(f"{n:<{c}}" for n, c in zip(names, cols)).rstrip() + "\n")
    for k in differ:
        vals = [n.values.get(k, "—") for n in nodes]
        common = Counter(vals).most_common(1)[0][0]
        marks = ["*" if v != common and len(nodes) > 2 else " " for v in vals]
        cells = [wrap(v, c) for v, c in zip(vals, cols)]
        for row in range(max(len(c) for c in cells)):
            line = f"{k if row == 0 else '':<{keyw}}" + " ".join(
                f"{cell[row] if row < len(cell) else '':<{c}}" + (mark if row == 0 else " ")
                for cell, c, mark in zip(cells, cols, marks))
            out.write(line.rstrip() + "\n")
    out.write(f"{len(differ)} differ, {same} identical" + ("  (* differs from the majority)" if len(nodes) > 2 else "")
              + (f"; failing checks on: {', '.join(failing)}" if failing else "") + "\n")
    return 1


def to_json(nodes: list[Node]) -> dict:
    differ, same = differences(nodes)
    return {"nodes": [n.name for n in nodes], "identical": same,
            "differences": {k: {n.name: n.values.get(k) for n in nodes} for k in differ}}
