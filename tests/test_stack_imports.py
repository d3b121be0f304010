"""deep.stack: the training stack imported for real. The table logic on built facts; end to end, a real
venv with peft 0.21 beside transformers 4.40 (both --no-deps, so pip sees nothing wrong) fails the
check on a machine without a GPU, and the printed remedy, run as printed, makes `import peft` work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from envbuild import dist, pyenv

from envdoctor.checks.stack import item_for, known_pair, stack
from envdoctor.facts.stack_imports import StackImport, StackImports
from envdoctor.model import Status

ERR = ("ImportError: cannot import name 'EncoderDecoderCache' from 'transformers' "
       "(/venv/lib/python3.11/site-packages/transformers/__init__.py)")


def failing(peft="0.21.2"):
    return StackImport("peft", peft, False, ERR, "peft.peft_model", 39, "transformers", 2.0)


def test_known_pair_names_the_release_that_fixes_it():
    env = pyenv(dist("peft", "0.21.2"), dist("transformers", "4.40.2"), dist("torch", "2.13.0+cpu"))
    row, need = known_pair("peft", "0.21.2", env)
    assert need.version == "4.40.2" and row["needs_spec"] == ">=4.43.0"
    item = item_for(failing(), env)
    assert item.status == Status.FAIL
    assert item.message == "import peft fails: peft 0.21.2 beside transformers 4.40.2"
    assert ERR in item.details and "raised in peft.peft_model, line 39" in item.details
    assert item.remedy.command.endswith("install 'transformers>=4.43.0' 'torch==2.13.0+cpu'")


def test_pair_outside_the_table_says_no_automatic_fix():
    env = pyenv(dist("peft", "0.99.0"), dist("transformers", "4.40.2"))
    assert known_pair("peft", "0.99.0", env) is None
    item = item_for(failing("0.99.0"), env)
    assert "version pair: peft 0.99.0 beside transformers 4.40.2" in item.details
    assert item.remedy.command is None and "no automatic fix" in item.remedy.text


def test_a_new_enough_partner_is_not_blamed_by_the_table():
    env = pyenv(dist("peft", "0.21.2"), dist("transformers", "4.50.3"))
    assert known_pair("peft", "0.21.2", env) is None


def test_all_imports_ok_and_none_installed():
    env = pyenv(dist("peft", "0.21.2"))
    res = stack(StackImports([StackImport("peft", "0.21.2", True, seconds=1.5)]), env)
    assert res.status == Status.OK and "peft" in res.message
    assert stack(StackImports([]), env).status == Status.SKIP


# --- end to end: a real broken venv ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def peft_beside_old_transformers(tmp_path_factory) -> Path:
    """torch 2.13.0 (CPU), transformers 4.40.2 with its own requirements, peft 0.21.2 --no-deps with the
    rest of its requirements: `pip check` is clean and `import peft` fails. Built once per run."""
    root = tmp_path_factory.mktemp("peft-old-transformers")
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    py = root / "venv" / "bin" / "python"

    def pip(*args):
        subprocess.run([str(py), "-m", "pip", "install", "-q", *args], check=True, timeout=900)
    pip("torch==2.13.0")
    pip("transformers==4.40.2", "torch==2.13.0")
    pip("--no-deps", "peft==0.21.2")
    pip("accelerate", "psutil", "torch==2.13.0", "transformers==4.40.2")
    return py


def doctor(py: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run([sys.executable, "-m", "envdoctor", "check", "--python", str(py), *args],
                          capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=900)


def result(report: str, check_id: str) -> dict:
    return next(r for r in json.loads(report)["results"] if r["id"] == check_id)


@pytest.mark.slow
def test_undeclared_incompatibility_fails_deep_and_the_printed_remedy_fixes_it(peft_beside_old_transformers):
    py = peft_beside_old_transformers
    assert subprocess.run([str(py), "-m", "pip", "check"], capture_output=True).returncode == 0
    shallow = doctor(py, "--json", "--only", "packages.requirements")
    assert result(shallow.stdout, "packages.requirements")["status"] == "ok"   # metadata sees nothing

    deep = doctor(py, "--deep", "--json")
    r = result(deep.stdout, "deep.stack")
    assert r["status"] == "fail"
    bad = [i for i in r["items"] if i["status"] == "fail"]
    assert [i["message"] for i in bad] == ["import peft fails: peft 0.21.2 beside transformers 4.40.2"]
    details = bad[0]["details"]
    assert any("cannot import name 'EncoderDecoderCache' from 'transformers'" in d for d in details)
    assert "raised in peft.peft_model, line 39" in details
    assert any(i["status"] == "ok" and i["message"].startswith("import transformers") for i in r["items"])

    # The remedy as printed, run by a shell, then the same check again and the import itself.
    cmd = bad[0]["remedy"]["command"]
    assert "'transformers>=4.43.0'" in cmd and "'torch==2.13.0+cpu'" in cmd
    subprocess.run(cmd, shell=True, check=True, timeout=900, capture_output=True)
    again = result(doctor(py, "--deep", "--json").stdout, "deep.stack")
    assert again["status"] == "ok", again
    out = subprocess.run([str(py), "-c", "import peft, torch; print(peft.__version__, torch.__version__)"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split() == ["0.21.2", "2.13.0+cpu"], out.stderr[-2000:]
