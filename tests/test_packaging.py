"""The package as users get it: a wheel in a clean venv and an editable install both find the bundled
folders the same way, and both run `envdoctor check`."""

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
# __pycache__ folders appear in train/ once its runner has run from a checkout; they are not content.
SHOW = ("import json, envdoctor, envdoctor.assets as a; "
        "print(json.dumps({'pkg': envdoctor.__file__, 'root': str(a.asset_root()), "
        "'files': {f: sorted(p.name for p in a.asset(f).iterdir() if p.name != '__pycache__') for f in a.FOLDERS}}))")


def fresh_venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True).create(path)
    return path / "bin" / "python"


def pip(py: Path, *args: str) -> None:
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args], check=True)


def expected_files() -> dict:
    return {f: sorted(p.name for p in (REPO / f).iterdir() if p.name != "__pycache__")
            for f in ("recipes", "fixes", "train", "wsl")}


def show(py: Path) -> dict:
    return json.loads(subprocess.run([str(py), "-c", SHOW], capture_output=True, text=True, check=True,
                                     cwd="/").stdout)


def run_check(py: Path) -> dict:
    exe = py.parent / "envdoctor"
    proc = subprocess.run([str(exe), "check", "--json", "--python", sys.executable, "--only", "python"],
                          capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)


def test_wheel_in_clean_venv(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
                    str(REPO)], check=True)
    (wheel,) = (tmp_path / "dist").glob("envdoctor-*.whl")
    py = fresh_venv(tmp_path / "venv")
    pip(py, str(wheel))
    info = show(py)
    assert "site-packages" in info["pkg"] and info["root"].endswith("envdoctor/_assets")
    assert info["files"] == expected_files()
    # torch is never a dependency of the doctor
    names = subprocess.run([str(py), "-m", "pip", "list", "--format=json"], capture_output=True, text=True,
                           check=True).stdout
    assert "torch" not in {d["name"].lower() for d in json.loads(names)}
    assert run_check(py)["facts"]["python"]["executable"] == sys.executable


def test_editable_install(tmp_path):
    py = fresh_venv(tmp_path / "venv")
    pip(py, "-e", str(REPO))
    info = show(py)
    assert info["pkg"] == str(REPO / "src" / "envdoctor" / "__init__.py")
    assert info["root"] == str(REPO) and info["files"] == expected_files()
    assert run_check(py)["schema_version"] == 5
