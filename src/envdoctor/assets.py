"""The bundled folders (recipes/, fixes/, train/, wsl/), found the same way from any install.

A wheel carries them in envdoctor/_assets/ (pyproject's force-include); a source checkout or an
editable install has them at the repository root, beside src/.
"""

from __future__ import annotations

from pathlib import Path

from envdoctor.errors import EnvdoctorError

FOLDERS = ("recipes", "fixes", "train", "wsl")
_PACKAGE = Path(__file__).resolve().parent


def asset_root() -> Path:
    packaged = _PACKAGE / "_assets"
    if packaged.is_dir():
        return packaged
    checkout = _PACKAGE.parent.parent
    if (checkout / "pyproject.toml").is_file() and all((checkout / f).is_dir() for f in FOLDERS):
        return checkout
    raise EnvdoctorError(f"envdoctor's bundled folders ({', '.join(FOLDERS)}) are missing: looked in "
                         f"{packaged} and {checkout}. Reinstall envdoctor.")


def asset(folder: str, *parts: str) -> Path:
    if folder not in FOLDERS:
        raise ValueError(f"unknown asset folder {folder!r}")
    return asset_root().joinpath(folder, *parts)
