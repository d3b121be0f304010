"""`envdoctor install` of the cpu recipe for real on this machine: a fresh venv whose check has no failures.

Only the host is fake (RAM, CPUs, free disk: a roomy Linux box), so the result cannot depend on how full
this machine's disk or memory is while the suite runs; the venv, pip and every other check are real."""

import io
import os

import pytest

from envdoctor import cli, registry
from envdoctor.assets import asset
from envdoctor.commands.install import run_install
from envdoctor.facts.host import probe_host
from envdoctor.registry import Provider
from envdoctor.system import System
from fakes import linux_box

pytestmark = pytest.mark.slow


@pytest.fixture
def roomy_host(monkeypatch, tmp_path):
    registry.load()  # the check modules, as the command loads them
    box, real = linux_box(tmp_path / "host"), registry.PROVIDERS["host"]
    monkeypatch.setitem(registry.PROVIDERS, "host", Provider("host", lambda system, ctx: probe_host(box, ctx),
                                                             real.timeout, real.owner, real.needs))


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """The environment of a user's shell, not of the test run: no PYTHONPATH, VIRTUAL_ENV or nvcc on PATH;
    pip's cache in tmp_path. Torch from PyTorch's CPU index, or a CPU wheel pip finds locally (find-links),
    with PyPI for torch's own dependencies: never PyPI's CUDA build (5 GB with its nvidia-* wheels)."""
    for key in list(os.environ):
        if key not in ("LANG", "LC_ALL", "TMPDIR") and not key.startswith("PIP_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "https://pypi.org/simple")
    monkeypatch.setenv("PIP_RETRIES", "1")  # where the CPU index is unreachable, say so once per package


class Terminal(io.StringIO):
    encoding = "utf-8"  # a UTF-8 terminal: the report uses its ✓/✗ marks


def test_install_cpu_recipe_then_check_has_no_failures(tmp_path, capsys, roomy_host, clean_env):
    recipe = tmp_path / "cpu.yaml"  # the bundled recipe, with torch from the CPU index
    text = asset("recipes", "cpu.yaml").read_text()
    assert "index: pypi" in text
    recipe.write_text(text.replace("index: pypi", "index: cpu"))
    venv = tmp_path / "stack"
    args = cli.build_parser().parse_args(["install", "--recipe", str(recipe), "--venv", str(venv)])
    out = Terminal()  # what `envdoctor install` prints (run_install's own default stream is bound at import)
    code = run_install(args, System(), out=out)
    assert code == 0, out.getvalue()[-5000:]
    assert "[✓] Recipe — matches cpu: 5 pins" in out.getvalue()
    code = cli.main(["check", "--python", str(venv / "bin" / "python")])
    text = capsys.readouterr().out
    assert code == 0 and "[✗]" not in text and "0 failed" in text, text
