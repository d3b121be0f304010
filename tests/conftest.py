"""Shared test setup.

Two tiers (the `slow` marker in pyproject.toml tells them apart; `pytest -m "not slow"` runs the first):

- fast unit tests on fake machines: a `FakeSystem` (tests/fakes.py) is the machine — its files in a
  temporary tree, its environment, scripted commands, its RAM, CPUs and free disk — and the probes and
  checks under test run for real against it. Facts of the machine running the tests (free disk, free
  RAM, GPUs, what is installed system-wide) never decide a result.
- end to end (`slow`): real venvs, real pip (PyPI and local wheels built by tests/wheels.py), the
  bundled runner training a tiny model on the CPU. Each venv a test diagnoses is built once per run
  (session- or module-scoped fixtures) and shared by the tests that read it.

A passing run leaves nothing in the temp folder: pytest deletes its basetemp (tmp_path_retention_policy =
"failed"), which holds every tmp_path, the session caches and, as TMPDIR, what subprocesses write.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import torchfake  # noqa: E402  (needs the sys.path line above)
from wheels import build_wheel  # noqa: E402

_OLD_TMPDIR = pytest.StashKey[object]()


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """Point TMPDIR into this run's basetemp before any test module is imported (some copy os.environ at
    import): what subprocesses leave in the temp folder (pip, torchrun's torchelastic_*, torch's
    torchinductor_<user>) goes when pytest deletes the basetemp of a passing run."""
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is None:  # pytest's tmp_path plugin disabled
        return
    tmp = factory.mktemp("tmp", numbered=False)
    config.stash[_OLD_TMPDIR] = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp)
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again


def pytest_unconfigure(config):
    if _OLD_TMPDIR in config.stash:
        old = config.stash[_OLD_TMPDIR]
        if old is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old
        tempfile.tempdir = None


@pytest.fixture(scope="session", autouse=True)
def _elf_build_cache(tmp_path_factory):
    """Libraries torchfake compiles with gcc, built once per run (not kept in /tmp between runs)."""
    torchfake.BUILD_CACHE = tmp_path_factory.mktemp("elf-cache")
    yield


@pytest.fixture(scope="session")
def venv_missing_a_requirement(tmp_path_factory) -> Path:
    """A real venv with one distribution whose requirement is not installed: the preflight must refuse it.
    Built once; tests only read it."""
    root = tmp_path_factory.mktemp("missing-req")
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    py = root / "venv" / "bin" / "python"
    wheel = build_wheel(root / "w", "needs-missing", "1.0", ["notinstalled-pkg>=1.0"])
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    return py


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    """After pytest removed a passing run's basetemp: drop its now dead `pytest-current` link and the
    empty pytest-of-<user> folder. Other runs' folders (a run in progress, a failed run) stay."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    basetemp = getattr(factory, "_basetemp", None)
    if basetemp is None or basetemp.exists() or getattr(factory, "_given_basetemp", None) is not None:
        return
    root = basetemp.parent
    for entry in root.glob("*-current"):
        if entry.is_symlink() and not entry.exists():
            entry.unlink(missing_ok=True)
    try:
        root.rmdir()  # only when empty
    except OSError:
        pass


@pytest.fixture(scope="session")
def cpu_torch_venv(tmp_path_factory) -> Path:
    """One real venv with torch 2.13.0 (the CPU build pip finds locally) and numpy, built once per run and
    shared: copying a venv with torch costs a minute. A test that installs into it removes what it added
    (`restored_after`), so the next one starts from the same environment."""
    root = tmp_path_factory.mktemp("cpu-torch")
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    py = root / "venv" / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "torch==2.13.0", "numpy"], check=True, timeout=1800)
    return py
