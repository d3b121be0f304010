"""`envdoctor install --recipe cpu` for real on this machine: a fresh venv with no failures."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_install_cpu_recipe_then_check_has_no_failures(tmp_path):
    venv = tmp_path / "stack"
    proc = subprocess.run([sys.executable, "-m", "envdoctor", "install", "--recipe", "cpu", "--venv", str(venv)],
                          capture_output=True, text=True, timeout=1800, env={"NO_COLOR": "1", "PATH": "/usr/bin:/bin",
                                                                               "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "[✓] Recipe — matches cpu: 5 pins" in proc.stdout
    again = subprocess.run([sys.executable, "-m", "envdoctor", "check", "--python", str(venv / "bin" / "python")],
                           capture_output=True, text=True, env={"NO_COLOR": "1", "PATH": "/usr/bin:/bin",
                                                                "HOME": str(tmp_path)})
    assert again.returncode == 0 and "[✗]" not in again.stdout and "0 failed" in again.stdout
