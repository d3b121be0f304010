"""What a run leaves behind: metrics.jsonl, a loss-curve PNG, run_summary.json with provenance."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path


def log_metrics(out: Path, row: dict) -> None:
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def loss_curve_png(out: Path, losses: list[float], val: list[tuple[int, float]], width=480, height=240) -> Path:
    """A plain PNG (no plotting library needed): training loss in black, validation points as squares."""
    img = [[255] * width for _ in range(height)]
    values = losses + [v for _, v in val]
    if values:
        lo, hi = min(values), max(values)
        span = (hi - lo) or 1.0
        n = max(len(losses) - 1, 1)

        def xy(i, v):
            return int(10 + (width - 20) * i / n), int(height - 10 - (height - 20) * (v - lo) / span)

        for i in range(len(losses) - 1):
            (x0, y0), (x1, y1) = xy(i, losses[i]), xy(i + 1, losses[i + 1])
            for t in range(max(abs(x1 - x0), abs(y1 - y0), 1) + 1):
                x = x0 + (x1 - x0) * t // max(abs(x1 - x0), abs(y1 - y0), 1)
                y = y0 + (y1 - y0) * t // max(abs(x1 - x0), abs(y1 - y0), 1)
                img[min(max(y, 0), height - 1)][min(max(x, 0), width - 1)] = 0
        for step, v in val:
            x, y = xy(min(step, n), v)
            for dy in range(-2, 3):
                for dx in range(-2, 3):
                    img[min(max(y + dy, 0), height - 1)][min(max(x + dx, 0), width - 1)] = 120
    raw = b"".join(b"\x00" + bytes(row) for row in img)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    path = out / "loss_curve.png"
    path.write_bytes(png)
    return path


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "tokenizers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
