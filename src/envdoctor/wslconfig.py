"""`.wslconfig`: a tolerant reader and a byte-preserving editor.

WSL reads %UserProfile%\\.wslconfig (INI) and ignores a malformed file without a word. The reader
accepts a BOM, CRLF, `#`/`;` comments, keys in any case, duplicate keys (the last one counts) and any
section; it reports every line WSL would not understand. The editor changes only the values of the
keys it is asked to set, in [wsl2], and keeps every other byte: other keys, sections, comments, key
spelling, line endings and the BOM.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

GiB = 1024 ** 3
BOM = "\ufeff"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|K|M|G|T)?\s*$", re.I)
_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024 ** 2, "MB": 1024 ** 2, "G": GiB, "GB": GiB,
          "T": 1024 ** 4, "TB": 1024 ** 4}
SIZE_KEYS = {"memory", "swap"}
INT_KEYS = {"processors"}


def parse_size(value: str) -> int | None:
    m = _SIZE.match(value)
    if not m:
        return None
    return int(float(m[1]) * _UNITS[(m[2] or "").upper()])


@dataclass
class WslConfig:
    values: dict[str, dict[str, str]] = field(default_factory=dict)  # section -> key (lower) -> raw value
    problems: list[str] = field(default_factory=list)                # "line 3: …"

    def get(self, section: str, key: str) -> str | None:
        return self.values.get(section.lower(), {}).get(key.lower())


def parse(text: str) -> WslConfig:
    cfg = WslConfig()
    section = None
    for n, raw in enumerate(text.lstrip(BOM).splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                cfg.problems.append(f"line {n}: {raw.strip()!r} is not a [section] header")
                continue
            section = line[1:-1].strip().lower()
            cfg.values.setdefault(section, {})
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            cfg.problems.append(f"line {n}: {raw.strip()!r} is not key=value")
            continue
        if section is None:
            cfg.problems.append(f"line {n}: {key.strip()}= comes before any [section]")
            continue
        k, v = key.strip().lower(), value.strip()
        if section == "wsl2" and k in SIZE_KEYS and parse_size(v) is None:
            cfg.problems.append(f"line {n}: {key.strip()}={v} is not a size like 48GB")
        if section == "wsl2" and k in INT_KEYS and not v.isdigit():
            cfg.problems.append(f"line {n}: {key.strip()}={v} is not a whole number")
        cfg.values[section][k] = v
    return cfg


@dataclass(frozen=True)
class Effective:
    memory: int          # bytes the VM gets
    processors: int | None
    swap: int
    memory_from: str     # ".wslconfig" or "WSL default (50% of Windows RAM)"
    swap_from: str


def effective(cfg: WslConfig | None, host_ram: int | None, host_cpus: int | None) -> Effective | None:
    """What the VM gets: the file's values where set and valid, WSL's defaults elsewhere."""
    cfg = cfg or WslConfig()
    mem_raw, swap_raw, cpu_raw = (cfg.get("wsl2", k) for k in ("memory", "swap", "processors"))
    mem = parse_size(mem_raw) if mem_raw else None
    if mem is None and host_ram is None:
        return None
    memory = mem if mem is not None else host_ram // 2
    swap = parse_size(swap_raw) if swap_raw else None
    if swap is None:
        swap = math.ceil((host_ram or memory * 2) * 0.25 / GiB) * GiB
    cpus = int(cpu_raw) if cpu_raw and cpu_raw.isdigit() else host_cpus
    return Effective(memory, cpus, swap, ".wslconfig" if mem is not None else "WSL default (50% of Windows RAM)",
                     ".wslconfig" if swap_raw and parse_size(swap_raw) is not None else
                     "WSL default (25% of Windows RAM)")


def set_values(text: str, updates: dict[str, str]) -> str:
    """`text` with [wsl2] keys set to `updates` (key -> value); everything else byte for byte."""
    bom = BOM if text.startswith(BOM) else ""
    body = text[len(bom):]
    newline = "\r\n" if "\r\n" in body else "\n"
    lines = body.splitlines(keepends=True)
    wanted = {k.lower(): v for k, v in updates.items()}
    section = None
    seen: set[str] = set()
    last_in_wsl2 = None          # index after which missing keys go
    header_at = None
    out = []
    for line in lines:
        stripped = line.strip()
        ending = line[len(line.rstrip("\r\n")):]
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1].strip().lower()
            if section == "wsl2" and header_at is None:
                header_at = len(out)
                last_in_wsl2 = len(out)
        elif section == "wsl2" and stripped and stripped[0] not in "#;" and "=" in stripped:
            key = stripped.split("=", 1)[0].strip()
            if key.lower() in wanted:
                indent = line[: len(line) - len(line.lstrip())]
                line = f"{indent}{key}={wanted[key.lower()]}{ending}"
                seen.add(key.lower())
            last_in_wsl2 = len(out)
        out.append(line)
    missing = [f"{k}={v}" for k, v in updates.items() if k.lower() not in seen]
    if missing:
        if header_at is None:
            if out and not out[-1].endswith(("\n", "\r")):
                out[-1] += newline
            if out and out[-1].strip():
                out.append(newline)
            out.append(f"[wsl2]{newline}")
            last_in_wsl2 = len(out) - 1
        at = last_in_wsl2 + 1
        if not out[last_in_wsl2].endswith(("\n", "\r")):
            out[last_in_wsl2] += newline
        out[at:at] = [m + newline for m in missing]
    return bom + "".join(out)


def recommend(host_ram: int, host_cpus: int | None) -> dict[str, str]:
    """memory = 75% of Windows RAM, leaving Windows at least 8 GiB; processors = all but a quarter
    (at least 2 left); swap = a third of the VM's memory. A 64 GB 16-core PC gets memory=48GB,
    processors=12, swap=16GB (the seed's values)."""
    ram_gib = host_ram // GiB
    memory = max(4, min(ram_gib - 8, (ram_gib * 3) // 4))
    out = {"memory": f"{memory}GB", "swap": f"{math.ceil(memory / 3)}GB"}
    if host_cpus:
        out["processors"] = str(max(1, host_cpus - max(2, host_cpus // 4)))
    return out
