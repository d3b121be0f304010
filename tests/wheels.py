"""Build tiny real wheels for tests (zip files in the wheel format), no build backend needed."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(out: Path, name: str, version: str, requires=(), files: dict | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    mod = name.replace("-", "_")
    info = f"{mod}-{version}.dist-info"
    meta = "\n".join(["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
                     + [f"Requires-Dist: {r}" for r in requires]) + "\n"
    entries = {f"{mod}/__init__.py": f"__version__ = {version!r}\n".encode(),
               f"{info}/METADATA": meta.encode(),
               f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: envdoctor-tests\nRoot-Is-Purelib: true\n"
                                b"Tag: py3-none-any\n"}
    for rel, data in (files or {}).items():
        entries[rel] = data if isinstance(data, bytes) else data.encode()
    record = "".join(f"{p},{_hash(d)},{len(d)}\n" for p, d in entries.items()) + f"{info}/RECORD,,\n"
    path = out / f"{mod}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for p, d in entries.items():
            zf.writestr(p, d)
        zf.writestr(f"{info}/RECORD", record)
    return path
