"""`.wslconfig`: what WSL makes of it (through the one reader, wslini) and what envdoctor recommends.

WSL reads %UserProfile%\\.wslconfig with its own INI parser (docs/wslconfig.md): it skips any line it
does not understand, and the first occurrence of a key wins. `parse` reports every line and value WSL
skips or rejects; harmless ones (a `;` "comment", a form feed) are notes, not problems. The editor that
changes values byte for byte is wslconfig_edit.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from envdoctor.wslini import BOM, Decoded, IniError, Scan, decode, scan, swallowed

GiB = 1024 ** 3
SIZE_KEYS = {"memory", "swap"}
INT_KEYS = {"processors"}
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "G": 1 << 30, "GB": 1 << 30,
          "T": 1 << 40, "TB": 1 << 40}
_STRTOUL = re.compile(r"^[ \t\n\v\f\r]*([+-]?)(\d+)(.*)$", re.S)
_STRTOL0 = re.compile(r"^[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9]\d*)$")


def parse_size(value: str) -> int | None:
    """Bytes, as WSL's ParseMemorySize reads a size: decimal digits, then nothing or exactly one of
    B K KB M MB G GB T TB (upper case, no space). "48GB" and "512M" are sizes; "48 GB", "48gb" and
    "1.5GB" are not, and WSL ignores the setting."""
    m = _STRTOUL.match(value)
    if not m:
        return None
    n = min(int(m[2]), (1 << 64) - 1)
    n = (-n) % (1 << 64) if m[1] == "-" else n
    if n == 0 and not (value.startswith("0") and m[2] == "0"):   # WSL: a zero is the digit 0 alone
        return None
    if m[3] not in _UNITS:
        return None
    return n * _UNITS[m[3]] % (1 << 64)


def parse_count(value: str) -> int | None:
    """A whole number as WSL reads one (strtol, base 0: 12, 0x0c and 014 are all twelve)."""
    m = _STRTOL0.match(value)
    if not m:
        return None
    n = int(m[2], 0) if not re.fullmatch(r"0[0-7]+", m[2]) else int(m[2], 8)
    return -n if m[1] == "-" else n


@dataclass
class WslConfig:
    values: dict[str, dict[str, str]] = field(default_factory=dict)  # section -> key (lower) -> the value WSL uses
    problems: list[str] = field(default_factory=list)                # "line 3: …": WSL skips or rejects it
    notes: list[str] = field(default_factory=list)                   # harmless oddities WSL warns about
    encoding: str = "UTF-8"
    unreadable: str | None = None                                    # why WSL cannot read the file at all
    ini: Scan | None = None

    def get(self, section: str, key: str) -> str | None:
        return self.values.get(section.lower(), {}).get(key.lower())


def read(data: bytes, name: str = ".wslconfig") -> WslConfig:
    """The file's bytes, decoded as WSL decodes them, then parsed. Undecodable text is one problem."""
    try:
        decoded = decode(data, name)
    except IniError as exc:
        return WslConfig(problems=[str(exc)], unreadable=str(exc))
    return from_decoded(decoded)


def from_decoded(decoded: Decoded) -> WslConfig:
    cfg = parse(decoded.text)
    cfg.encoding = decoded.label
    if decoded.wsl_reads:
        cfg.unreadable = decoded.wsl_reads
        cfg.problems.insert(0, f"WSL cannot read this file: {decoded.wsl_reads}; save it as UTF-8 "
                               "(or UTF-16-LE with a byte-order mark)")
    return cfg


def parse(text: str) -> WslConfig:
    text = text[1:] if text.startswith(BOM) else text
    ini = scan(text, text_mode=True)
    cfg = WslConfig(ini=ini)
    lines = re.split(r"\r\n|\r|\n", text)
    for name, e in ini.values.items():
        section, _, key = name.rpartition(".")
        if not section:
            cfg.problems.append(f"line {e.line}: {e.key}= comes before any [section]: WSL ignores it")
            continue
        cfg.values.setdefault(section, {})[key] = e.value
        if section == "wsl2" and key in SIZE_KEYS and parse_size(e.value) is None:
            cfg.problems.append(f"line {e.line}: {e.key}={e.value} is not a size like 48GB "
                                "(digits, then B, K, KB, M, MB, G, GB, T or TB)")
        if section == "wsl2" and key in INT_KEYS and parse_count(e.value) is None:
            cfg.problems.append(f"line {e.line}: {e.key}={e.value} is not a whole number")
    for h in ini.headers:
        cfg.values.setdefault(h.name, {})
    for d in ini.duplicates:
        first = ini.values[d.name]
        cfg.problems.append(f"line {d.line}: {d.key}={d.value} repeats line {first.line} ({first.key}="
                            f"{first.value}): WSL uses the first and ignores this one")
    for s in ini.skipped:
        raw = lines[s.line - 1].strip(" \t") if s.line <= len(lines) else ""
        over = swallowed(text, s)
        if over:
            cfg.problems.append(f"line {s.line}: {'this comment' if s.comment else repr(raw)} runs on to the next "
                                f"LF (line feed): WSL ends it only there, so lines {over[0]}-{over[1]} (ending "
                                "in CR alone) are never read; save the file with CRLF or LF line endings")
        elif s.comment:
            continue
        elif not raw.strip(" \t\f\v") or raw.startswith(";"):
            cfg.notes.append(f"line {s.line}: {raw!r}: WSL warns and skips it ({s.reason}); harmless")
        else:
            cfg.problems.append(f"line {s.line}: {raw!r} is skipped by WSL: {s.reason}")
    return cfg


@dataclass(frozen=True)
class Effective:
    memory: int          # bytes the VM gets
    processors: int | None
    swap: int
    memory_from: str     # ".wslconfig" or "WSL default (50% of Windows RAM)"
    swap_from: str


def effective(cfg: WslConfig | None, host_ram: int | None, host_cpus: int | None) -> Effective | None:
    """What the VM gets, as WSL computes it: the file's values where set and valid (memory kept within
    256 MB and Windows' RAM, processors within the host's), its defaults elsewhere (memory: half of
    Windows' RAM; swap: a quarter of the VM's memory, rounded up to a whole GiB)."""
    cfg = cfg or WslConfig()
    mem_raw, swap_raw, cpu_raw = (cfg.get("wsl2", k) for k in ("memory", "swap", "processors"))
    mem = parse_size(mem_raw) if mem_raw is not None else None
    mem = mem or None                 # WSL treats memory=0 as "not set"
    if mem is None and host_ram is None:
        return None
    memory = max(mem, 256 << 20) if mem is not None else host_ram // 2
    memory = min(memory, host_ram) if host_ram else memory
    swap = parse_size(swap_raw) if swap_raw is not None else None
    swap_from = ".wslconfig" if swap is not None else "WSL default (25% of the VM's memory)"
    if swap is None:
        swap = math.ceil(memory / 4 / GiB) * GiB
    cpus = parse_count(cpu_raw) if cpu_raw is not None else None
    cpus = host_cpus if not cpus or cpus <= 0 else min(cpus, host_cpus) if host_cpus else cpus
    return Effective(memory, cpus, swap, ".wslconfig" if mem is not None else "WSL default (50% of Windows RAM)",
                     swap_from)


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
