"""`envdoctor fix` with real pip in temporary venvs, from wheels the tests build (no index at all)."""

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from wheels import build_wheel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory):
    w = tmp_path_factory.mktemp("wheels")
    build_wheel(w, "torch", "2.8.0+cu128")
    build_wheel(w, "torch", "2.9.0+cu128")          # newer: pip would take it without the pin
    build_wheel(w, "aopkg", "0.13.0", ["torch>=2.8"])
    build_wheel(w, "aopkg", "0.14.0", ["torch>=2.9"])  # the newest wants another torch
    build_wheel(w, "needs-ao", "1.0", ["aopkg>=0.13", "torch>=2.4"])
    build_wheel(w, "alpha", "1.0")
    build_wheel(w, "needs-two", "1.0", ["alpha>=1", "zeta>=5"])  # zeta exists nowhere
    return w


def make_venv(root: Path, wheelhouse: Path, *names: str) -> Path:
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    py = root / "venv" / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--find-links",
                    str(wheelhouse), *names], check=True)
    return py


def doctor(py: Path, wheelhouse: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheelhouse), "HOME": str(home),
           "NO_COLOR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run([sys.executable, "-m", "envdoctor", "fix", "--python", str(py), *args],
                          capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=600)


def freeze(py: Path) -> str:
    return subprocess.run([str(py), "-m", "pip", "freeze", "--all"], capture_output=True, text=True,
                          check=True).stdout


def tree_hash(py: Path) -> str:
    h = hashlib.sha256()
    for p in sorted((py.parent.parent / "lib").rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(str(p).encode() + p.read_bytes())
    return h.hexdigest()


def test_missing_dependency_installed_with_torch_pinned_then_nothing_to_do(tmp_path, wheelhouse):
    py = make_venv(tmp_path, wheelhouse, "torch==2.8.0+cu128", "needs-ao")
    first = doctor(py, wheelhouse, tmp_path, "--all", "--yes")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "packages.install-missing: Install missing and conflicting requirements" in first.stdout
    assert "constraints file: torch==2.8.0+cu128" in first.stdout
    assert "[✓] packages.install-missing: fixed" in first.stdout
    frozen = freeze(py)
    assert "torch==2.8.0+cu128" in frozen and "aopkg==0.13.0" in frozen  # not 0.14.0, which needs torch 2.9
    logs = list((tmp_path / ".cache" / "envdoctor" / "logs").glob("*packages.install-missing.log"))
    assert logs and "Successfully installed aopkg-0.13.0" in logs[0].read_text()
    second = doctor(py, wheelhouse, tmp_path, "--all", "--yes")
    assert second.returncode == 0 and "Nothing to fix" in second.stdout


def test_failure_midway_restores_the_environment_exactly(tmp_path, wheelhouse):
    py = make_venv(tmp_path, wheelhouse, "torch==2.8.0+cu128", "needs-ao", "needs-two")
    before = freeze(py)
    res = doctor(py, wheelhouse, tmp_path, "--all", "--yes")
    assert res.returncode == 1
    assert "failed at 'install zeta>=5'; environment restored exactly as before" in res.stdout
    assert "No matching distribution found for zeta" in res.stdout
    assert freeze(py) == before  # aopkg and alpha, installed by the steps before, are gone again


def test_dry_run_changes_nothing_and_no_tty_needs_yes(tmp_path, wheelhouse):
    py = make_venv(tmp_path, wheelhouse, "torch==2.8.0+cu128", "needs-ao")
    before, files = freeze(py), tree_hash(py)
    res = doctor(py, wheelhouse, tmp_path, "--all", "--dry-run")
    assert res.returncode == 0 and "--dry-run: nothing was changed." in res.stdout
    assert "pip-install.sh aopkg>=0.13" in res.stdout.replace("'", "")
    refused = doctor(py, wheelhouse, tmp_path, "--all")
    assert refused.returncode == 2 and "pass --yes" in refused.stderr
    assert freeze(py) == before and tree_hash(py) == files
