"""End to end: a real venv, real pip, real wheels; envdoctor diagnoses it from outside."""

import json
import subprocess
import sys
import venv

import pytest
from wheels import build_wheel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def broken_venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    py = root / "venv" / "bin" / "python"
    wheels = [
        build_wheel(root / "w", "basepkg", "2.0"),
        build_wheel(root / "w", "needs-missing", "1.0", ["notinstalled-pkg>=1.0"]),
        build_wheel(root / "w", "pins-old", "1.0", ["basepkg==1.0", 'winonly; sys_platform == "win32"']),
    ]
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", *map(str, wheels)],
                   check=True)
    return py


def test_check_finds_missing_and_conflicting_requirements(broken_venv):
    proc = subprocess.run([sys.executable, "-m", "envdoctor", "check", "--json", "--python", str(broken_venv)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    assert data["summary"]["exit_code"] == 1
    assert data["facts"]["python"]["executable"] == str(broken_venv)
    req = next(r for r in data["results"] if r["id"] == "packages.requirements")
    assert req["status"] == "fail"
    messages = sorted(i["message"] for i in req["items"])
    assert messages == ["needs-missing 1.0 requires notinstalled-pkg>=1.0, but it is not installed",
                        "pins-old 1.0 requires basepkg==1.0, but 2.0 is installed"]
    assert req["remedy"]["command"] == (f"{broken_venv} -m pip install 'basepkg==1.0' 'notinstalled-pkg>=1.0'")
    # pip agrees with what envdoctor found, and nothing more.
    pip = subprocess.run([str(broken_venv), "-m", "pip", "check"], capture_output=True, text=True)
    assert pip.returncode == 1
    assert "needs-missing 1.0 requires notinstalled-pkg, which is not installed." in pip.stdout
    assert "pins-old 1.0 has requirement basepkg==1.0, but you have basepkg 2.0." in pip.stdout
    assert len(pip.stdout.strip().splitlines()) == 2


def test_text_report_of_the_same_venv(broken_venv):
    proc = subprocess.run([sys.executable, "-m", "envdoctor", "check", "--python", str(broken_venv),
                           "--only", "packages"], capture_output=True, text=True, timeout=120,
                          env={"NO_COLOR": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1
    assert "[✗] Package requirements — requirements: 1 missing, 1 version conflicts" in proc.stdout
    assert "Python" not in proc.stdout.split("\n", 2)[2]  # only the selected category
