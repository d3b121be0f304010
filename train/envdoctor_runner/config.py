"""The resolved config the runner reads: `config.resolved.json`, written by `envdoctor train` with every
key of envdoctor's schema filled (src/envdoctor/training/config.py). The runner has no defaults of its
own: a key that is missing is an error that says where the file came from, not a silent guess."""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA_VERSION = 1  # the version of envdoctor's schema this runner reads


class Config(dict):
    """A dict whose missing keys are a clear error naming the file (the runner reads `cfg[key]` only)."""

    path: Path

    def __missing__(self, key):
        raise SystemExit(f"error: {self.path}: key {key!r} is missing: this runner reads a config resolved by "
                         "`envdoctor train` (every key filled); write it with envdoctor, or add the key")


def load(path: str | Path) -> Config:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: {path}: cannot read the resolved config ({exc})") from None
    if not isinstance(data, dict):
        raise SystemExit(f"error: {path}: expected a JSON object")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise SystemExit(f"error: {path}: schema_version {data.get('schema_version')!r}, this runner reads "
                         f"{SCHEMA_VERSION}: re-run `envdoctor train` with the envdoctor that ships this runner")
    cfg = Config(data)
    cfg.path = path
    return cfg
