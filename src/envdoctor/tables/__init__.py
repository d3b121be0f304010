"""Data tables (JSON) that checks read; loaded once, never hand-copied into code."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).resolve().parent


@lru_cache(maxsize=None)
def load(name: str) -> dict:
    with open(HERE / f"{name}.json", encoding="utf-8") as fh:
        return json.load(fh)
