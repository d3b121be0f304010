"""One source for each remedy: a typed request per fix id, from which both the printed command and the
`envdoctor fix` plan are made; repair/ does not reach into checks/; and no pip command is printed into an
externally managed interpreter (PEP 668), proved on fake facts and on a real interpreter marked so."""

from __future__ import annotations

import ast
import json
import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from envbuild import dist, pyenv
from wheels import build_wheel

import envdoctor
from envdoctor.checks.packages import requirements
from envdoctor.cpu_torch import bnb_cpu_item
from envdoctor.facts.torch_build import TorchFacts
from envdoctor.repair.plan import FIXES
from envdoctor.repair.requests import (REQUESTS, AlignCompanions, EditPth, EditWslConfig, InstallNewer,
                                       InstallSpecs, PureWheel, RebuildFlashAttn, ReinstallTorch, RemoveLeftovers,
                                       remedy)
from envdoctor.repair.script import step_command
from envdoctor.system import System

SRC = Path(envdoctor.__file__).parent
PY = pyenv(dist("torch", "2.13.0+cpu"))
CPU = TorchFacts(True, "2.13.0+cpu", "cpu", None, cxx11_abi=True)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function (ast, not a text search)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_repair_does_not_import_checks():
    files = sorted((SRC / "repair").glob("*.py"))
    assert len(files) >= 5
    bad = {f.name: sorted(m for m in imports_of(f) if m == "envdoctor.checks" or m.startswith("envdoctor.checks."))
           for f in files}
    assert {k: v for k, v in bad.items() if v} == {}


def test_every_fix_id_has_exactly_one_request_type():
    assert sorted(REQUESTS) == sorted(FIXES)
    assert all(cls.fix_id == fid for fid, cls in REQUESTS.items())


PIP_REQUESTS = [
    InstallSpecs(("peft>=0.5", "basepkg==1.0"), "torch==2.13.0+cpu"),
    InstallNewer(("bitsandbytes>=0.46.0",), "torch==2.13.0+cpu"),
    AlignCompanions(("torchvision==0.28.*",), "https://download.pytorch.org/whl/cpu", True, "torch==2.13.0+cpu"),
    AlignCompanions(("torchao==0.18.0",), None, False, "torch==2.13.0+cpu"),
    ReinstallTorch(("torch==2.7.1", "torchvision==0.22.*"), "https://download.pytorch.org/whl/cu128"),
    ReinstallTorch(("torch==2.13.0+cpu",), None, force=True),
]


def pip_call_of(plan, exe: str) -> list[str]:
    """The plan's pip-install.sh steps as the one pip call they add up to, the constraints file's pin as a
    requirement (where --no-deps does not make it moot)."""
    assert {s.script for s in plan.steps} == {"pip-install.sh"}
    options = [a for a in plan.steps[0].args if a in ("--force-reinstall", "--no-deps")]
    index = plan.steps[0].args[plan.steps[0].args.index("--index-url"):] if "--index-url" in plan.steps[0].args else []
    specs = [a for s in plan.steps for a in s.args if a not in options and a not in index]
    pin = [plan.pin_torch] if plan.pin_torch and "--no-deps" not in options else []
    return [exe, "-m", "pip", "install", *options, *specs, *pin, *index]


@pytest.mark.parametrize("request_", PIP_REQUESTS, ids=lambda r: f"{r.fix_id}:{','.join(r.specs)}")
def test_a_printed_pip_command_is_the_plans_pip_call(request_):
    r = remedy(request_, PY, "why")
    assert r.fix_id == request_.fix_id and r.request is request_
    plan = FIXES[request_.fix_id].planner([r.request], PY, CPU, None)
    assert shlex.split(r.command) == pip_call_of(plan, PY.executable)
    assert all(tok.startswith("'") for tok in r.command.split()[4:] if not tok.startswith(("-", "https://")))


@pytest.mark.parametrize("request_", [
    RebuildFlashAttn("2.8.3", "https://example.invalid/fa.whl", 4, 2, "90;120", "torch==2.8.0+cu128"),
    PureWheel(("torchao==0.18.0",)),
    RemoveLeftovers(("/v/site/~orch", "/v/site/~orch-2.13.0+cpu.dist-info", "/v/site/it's here")),
], ids=lambda r: r.fix_id)
def test_a_printed_script_call_is_the_plans_step(request_):
    r = remedy(request_, PY)
    plan = FIXES[request_.fix_id].planner([r.request], PY, CPU, None)
    if isinstance(request_, RemoveLeftovers):   # printed as the rm it comes to; the script adds its refusals
        assert plan.steps[0].args == list(request_.paths)
        assert shlex.split(r.command) == ["rm", "-rf", "--", *request_.paths]
    else:
        assert [step_command(s, PY.executable) for s in plan.steps] == [r.command]


def test_printed_pth_and_wslconfig_edits_write_what_the_plans_write(tmp_path):
    """The file edits, printed (cp + sed; `envdoctor wslconfig set`) and run by a shell, leave the very
    bytes the plan's FileEdit would write."""
    pth = tmp_path / "my dir" / "x.pth"
    pth.parent.mkdir()
    pth.write_bytes(b"/opt/keep\nimport sys; sys.path.insert(0, '/opt/old')\n/opt/keep2\n")
    req = EditPth(str(pth), 2, "import sys; sys.path.insert(0, '/opt/old')")
    plan = FIXES["packages.pth-edit"].planner([req], PY, None, System())
    subprocess.run(remedy(req, PY).command, shell=True, check=True)
    assert pth.read_bytes() == plan.edits[0].new == b"/opt/keep\n/opt/keep2\n"

    cfg = tmp_path / ".wslconfig"
    cfg.write_bytes(b"[wsl2]\r\n# mine\r\nmemory=8GB\r\n")
    wreq = EditWslConfig(str(cfg), (("memory", "48GB"), ("processors", "12")))
    wplan = FIXES["wsl.memory"].planner([wreq], PY, None, System())
    command = remedy(wreq, PY).command
    assert command.startswith("envdoctor wslconfig set ")
    env = {**os.environ, "PYTHONPATH": str(SRC.parent)}
    argv = [sys.executable, "-m", "envdoctor", *shlex.split(command)[1:]]
    subprocess.run(argv, check=True, capture_output=True, env=env, cwd=tmp_path)
    assert cfg.read_bytes() == wplan.edits[0].new
    for leftover in tmp_path.glob(".wslconfig.*bak"):
        leftover.unlink()


@pytest.mark.parametrize("request_", PIP_REQUESTS + [
    RebuildFlashAttn("2.8.3", "u", 4, 2), PureWheel(("a==1",)), RemoveLeftovers(("/s/~a",)),
    EditPth("/f.pth", 3, "x"), EditWslConfig("/c/.wslconfig", (("memory", "8GB"),))], ids=lambda r: r.fix_id)
def test_the_reports_params_read_back_into_the_same_request(request_):
    params = json.loads(json.dumps(remedy(request_, PY).to_dict()))["params"]
    assert REQUESTS[request_.fix_id].from_dict(params) == request_
    assert FIXES[request_.fix_id].planner([params], PY, CPU, System()) == \
        FIXES[request_.fix_id].planner([request_], PY, CPU, System())


# --- PEP 668 ---------------------------------------------------------------------------------------------

SYSTEM_PY = dict(executable="/usr/bin/python3.11", in_venv=False, externally_managed=True, prefix="/usr",
                 base_prefix="/usr")


def test_no_pip_command_into_an_externally_managed_interpreter():
    py = pyenv(dist("torch", "2.13.0+cpu"), dist("peft", "0.5.0", ["missing-pkg>=1"]),
               dist("bitsandbytes", "0.42.0"), **SYSTEM_PY)
    result = requirements(py)
    bnb = bnb_cpu_item(py, CPU)
    for r in [result.remedy, *(i.remedy for i in result.items), bnb.remedy]:
        assert r.command.startswith("/usr/bin/python3.11 -m venv ~/.venvs/finetune"), r
        assert r.fix_id is None and r.request is None
        assert "externally managed (PEP 668)" in r.text and "envdoctor install --venv" in r.text
        assert "/usr/bin/python3.11 -m pip" not in r.command + r.text
        assert "in the activated venv: python -m pip install '" in r.text
    # The same facts in a venv of that Python: the pip command and the fix, as usual.
    venv = requirements(pyenv(*py.distributions))
    assert venv.remedy.fix_id == "packages.install-missing" and "-m pip install 'missing-pkg>=1'" in venv.remedy.command


def externally_managed_python(root: Path) -> tuple[Path, Path]:
    """A real interpreter that is no venv (its own prefix: a copy of the system python3.11 beside links to
    its stdlib), whose stdlib folder holds an EXTERNALLY-MANAGED file: PEP 668's marker, as distributions
    ship it. Returns (python, its site folder)."""
    system = Path("/usr/bin/python3.11")
    stdlib = Path("/usr/lib/python3.11")
    if not (system.exists() and (stdlib / "os.py").exists()):
        pytest.skip("no Debian-style /usr/bin/python3.11 here to copy")
    (root / "bin").mkdir(parents=True)
    shutil.copy2(system, root / "bin" / "python3.11")
    lib = root / "lib" / "python3.11"
    lib.mkdir(parents=True)
    for entry in stdlib.iterdir():
        if entry.name not in ("EXTERNALLY-MANAGED", "site-packages", "dist-packages"):
            (lib / entry.name).symlink_to(entry)
    (lib / "EXTERNALLY-MANAGED").write_text("[externally-managed]\nError=managed by the test's 'distribution'\n")
    py = root / "bin" / "python3.11"
    out = subprocess.run([str(py), "-c", "import sys, sysconfig; print(sys.prefix == sys.base_prefix); "
                          "print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True)
    in_own_prefix, site = out.stdout.split()
    assert in_own_prefix == "True"
    Path(site).mkdir(parents=True)
    return py, Path(site)


@pytest.mark.slow
def test_real_externally_managed_interpreter_gets_the_venv_route_and_fix_refuses(tmp_path):
    py, site = externally_managed_python(tmp_path / "sys")
    wheel = build_wheel(tmp_path / "w", "needs-missing", "1.0", ["notinstalled-pkg>=1.0"])
    with zipfile.ZipFile(wheel) as zf:     # installed as the distribution's package manager would: files only
        zf.extractall(site)
    env = {**os.environ, "HOME": str(tmp_path), "NO_COLOR": "1", "PYTHONPATH": str(SRC.parent)}
    env.pop("VIRTUAL_ENV", None)

    def envdoctor(*args):
        return subprocess.run([sys.executable, "-m", "envdoctor", *args, "--python", str(py)], capture_output=True,
                              text=True, env=env, stdin=subprocess.DEVNULL, timeout=600)

    report = json.loads(envdoctor("check", "--json", "--only", "packages.requirements", "python.environment").stdout)
    res = {r["id"]: r for r in report["results"]}
    assert res["python.environment"]["status"] != "ok" and "externally managed" in res["python.environment"]["message"]
    req = res["packages.requirements"]
    assert req["status"] == "fail"
    for r in [req["remedy"]] + [i["remedy"] for i in req["items"]]:
        assert r["command"].startswith(f"{py} -m venv ~/.venvs/finetune") and r["fix_id"] is None
        assert "-m pip install 'notinstalled-pkg>=1.0'" in r["text"] and f"{py} -m pip" not in r["text"]
    fix = envdoctor("fix", "--all", "--yes")
    assert fix.returncode == 1 and "refused" in fix.stdout and "externally managed (PEP 668" in fix.stdout
    assert "envdoctor install --venv" in fix.stdout and f"{py} -m venv" in fix.stdout, fix.stdout
    assert sorted(p.name for p in site.iterdir()) == ["needs_missing", "needs_missing-1.0.dist-info"]
