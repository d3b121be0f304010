"""Finding classes whose remedy is applied for real: the broken environment is built in a real venv
(tiny wheels, no index), the printed remedy (run by a shell, as a user would) or `envdoctor fix` is
applied, and the re-check is clean *and* the import works afterwards.

- an interrupted pip run (`~pkg/` and `~pkg-1.0.dist-info`): a leftover, not a second install;
- a venv made with --system-site-packages: its own copies hide the system site's; no finding;
- a `.pth` line that inserts a folder with an older copy ahead of site-packages: the line is removed
  (backup kept), not `pip uninstall`;
- PEP 668: `fix` refuses pip into an externally managed interpreter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from envbuild import dist, pyenv
from wheels import build_wheel

from envdoctor.repair import refusals
from envdoctor.repair.plan import Plan, Step

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory):
    w = tmp_path_factory.mktemp("wheels")
    build_wheel(w, "leftpkg", "1.0")
    build_wheel(w, "leftpkg", "1.1")
    build_wheel(w, "shadowpkg", "1.0")
    build_wheel(w, "shadowpkg", "2.0")
    build_wheel(w, "needs-shadow", "1.0", ["shadowpkg>=2.0"])
    return w


def make_venv(root: Path, wheelhouse: Path, *names: str, system_site: bool = False) -> Path:
    venv.EnvBuilder(with_pip=True, system_site_packages=system_site).create(root / "venv")
    py = root / "venv" / "bin" / "python"
    if names:
        pip(py, wheelhouse, *names)
    return py


def pip(py: Path, wheelhouse: Path, *args: str) -> None:
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--find-links",
                    str(wheelhouse), *args], check=True)


def site_of(py: Path) -> Path:
    return Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())


def envdoctor(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home), "NO_COLOR": "1", "PIP_NO_INDEX": "1"}
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run([sys.executable, "-m", "envdoctor", *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=600)


def results(home: Path, py: Path, *ids: str) -> dict[str, dict]:
    res = envdoctor(home, "check", "--json", "--python", str(py), "--only", *ids)
    return {r["id"]: r for r in json.loads(res.stdout)["results"]}


def imports(py: Path, module: str) -> str:
    out = subprocess.run([str(py), "-c", f"import {module}; print({module}.__version__)"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


# --- an interrupted pip run ------------------------------------------------------------------------------

def interrupted(tmp_path: Path, wheelhouse: Path) -> tuple[Path, list[Path]]:
    """leftpkg 1.1 installed over 1.0, the run cut off before pip deleted the renamed old copy: pip
    renames `leftpkg/` to `~eftpkg/` and `leftpkg-1.0.dist-info` to `~eftpkg-1.0.dist-info`."""
    py = make_venv(tmp_path, wheelhouse, "leftpkg==1.0")
    site = site_of(py)
    stale = [site / "~eftpkg", site / "~eftpkg-1.0.dist-info"]
    shutil.copytree(site / "leftpkg", stale[0])
    shutil.copytree(site / "leftpkg-1.0.dist-info", stale[1])
    pip(py, wheelhouse, "--upgrade", "leftpkg==1.1")
    return py, stale


@pytest.mark.parametrize("how", ["printed", "fix"])
def test_interrupted_pip_run_is_one_leftover_finding_and_its_remedy_removes_every_path(tmp_path, wheelhouse,
                                                                                      how):
    py, stale = interrupted(tmp_path, wheelhouse)
    r = results(tmp_path, py, "packages.duplicates", "packages.metadata")
    assert r["packages.duplicates"]["status"] == "ok"             # a ~dist-info is not an install
    meta = r["packages.metadata"]
    assert meta["status"] == "warn" and len(meta["items"]) == 1
    item = meta["items"][0]
    assert "~eftpkg, ~eftpkg-1.0.dist-info" in item["message"]
    if how == "printed":
        subprocess.run(item["remedy"]["command"], shell=True, check=True)
    else:
        res = envdoctor(tmp_path, "fix", "packages.remove-leftovers", "--yes", "--python", str(py))
        assert res.returncode == 0, res.stdout + res.stderr
        assert "[✓] packages.remove-leftovers: fixed" in res.stdout
    assert not any(p.exists() for p in stale)
    again = results(tmp_path, py, "packages.duplicates", "packages.metadata")
    assert {k: v["status"] for k, v in again.items()} == {"packages.duplicates": "ok", "packages.metadata": "ok"}
    assert imports(py, "leftpkg") == "1.1"


# --- --system-site-packages ------------------------------------------------------------------------------

def system_site_dist(py: Path) -> tuple[str, str] | None:
    """(name, version) of a distribution in the system site the venv sees, other than pip/setuptools."""
    code = ("import sys, os, glob\n"
            "for p in sys.path[1:]:\n"
            "    if p and not p.startswith(sys.prefix) and os.path.isdir(p):\n"
            "        for d in sorted(glob.glob(os.path.join(p, '*.dist-info'))):\n"
            "            n, v = os.path.basename(d)[:-10].split('-', 1)\n"
            "            if n.isidentifier() and n.lower() not in ('pip', 'setuptools', 'wheel'):\n"
            "                print(n, v); raise SystemExit\n")
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return (out[0], out[1]) if out else None


def test_system_site_copies_hidden_by_the_venv_are_not_duplicates(tmp_path, wheelhouse):
    py = make_venv(tmp_path, wheelhouse, system_site=True)
    # The venv's own copy of a system-site package, at another version (the case that was a failure).
    found = system_site_dist(py)
    if found:
        build_wheel(wheelhouse, found[0], "999.0")
        pip(py, wheelhouse, f"{found[0]}==999.0")
    r = results(tmp_path, py, "packages.duplicates")["packages.duplicates"]
    assert r["status"] == "ok", r
    assert r["items"] and all(i["status"] == "ok" and "hides the system site" in i["message"] for i in r["items"])
    names = [i["message"].split()[0] for i in r["items"]]
    assert "pip" in names                                        # the venv got its own pip: in both
    if found:
        assert f"{found[0]} 999.0: the venv's copy hides the system site's {found[1]} (--system-site-packages)" \
            in [i["message"] for i in r["items"]]
        assert imports(py, found[0]) == "999.0"


# --- a .pth that puts an older copy ahead of site-packages -------------------------------------------------

def shadowed(tmp_path: Path, wheelhouse: Path) -> tuple[Path, Path, Path]:
    py = make_venv(tmp_path, wheelhouse, "shadowpkg==2.0", "needs-shadow")
    old = tmp_path / "old-libs"
    pip(py, wheelhouse, "--target", str(old), "shadowpkg==1.0")
    pth = site_of(py) / "zz-old-libs.pth"
    pth.write_text(f"# added by a tool\nimport sys; sys.path.insert(0, {str(old)!r})\n")
    return py, old, pth


@pytest.mark.parametrize("how", ["printed", "fix"])
def test_pth_shadowing_is_named_and_its_line_removed_with_a_backup(tmp_path, wheelhouse, how):
    py, old, pth = shadowed(tmp_path, wheelhouse)
    assert imports(py, "shadowpkg") == "1.0"
    r = results(tmp_path, py, "packages.duplicates", "packages.requirements")
    dup = r["packages.duplicates"]
    assert dup["status"] == "fail"
    item = dup["items"][0]
    assert item["message"] == (f"shadowpkg 1.0 in {old} shadows shadowpkg 2.0 in site-packages: {pth} line 2 "
                               "inserts it ahead of site-packages")
    assert item["remedy"]["fix_id"] == "packages.pth-edit" and "pip" not in item["remedy"]["command"]
    req = r["packages.requirements"]["items"][0]
    assert req["status"] == "fail" and req["remedy"]["command"] is None and "packages.pth-edit" in \
        req["remedy"]["text"]                                      # no pip command that pip would refuse
    if how == "printed":
        subprocess.run(item["remedy"]["command"], shell=True, check=True)
        backups = [Path(str(pth) + ".bak")]
    else:
        res = envdoctor(tmp_path, "fix", "--all", "--yes", "--python", str(py))
        assert res.returncode == 0, res.stdout + res.stderr
        assert "packages.install-missing" not in res.stdout           # only the .pth edit
        assert "[✓] packages.pth-edit: fixed" in res.stdout
        backups = list(pth.parent.glob(pth.name + ".envdoctor-*.bak"))
    assert len(backups) == 1 and "sys.path.insert" in backups[0].read_text()
    assert pth.read_text() == "# added by a tool\n"
    again = results(tmp_path, py, "packages.duplicates", "packages.requirements")
    assert {k: v["status"] for k, v in again.items()} == {"packages.duplicates": "ok",
                                                          "packages.requirements": "ok"}
    assert imports(py, "shadowpkg") == "2.0"


def test_pythonpath_shadowing_is_named_with_no_automatic_fix_and_clears_without_it(tmp_path, wheelhouse):
    """A folder on PYTHONPATH with an older copy: named, no fix id (envdoctor does not edit shell start-up
    files); the remedy (take it off PYTHONPATH) applied, the re-check is clean and the new copy imports."""
    py = make_venv(tmp_path, wheelhouse, "shadowpkg==2.0", "needs-shadow")
    old = tmp_path / "old-libs"
    pip(py, wheelhouse, "--target", str(old), "shadowpkg==1.0")
    inherited = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(old), inherited]))
    try:
        assert imports(py, "shadowpkg") == "1.0"
        dup = results(tmp_path, py, "packages.duplicates")["packages.duplicates"]
    finally:
        if inherited is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = inherited
    assert dup["status"] == "fail", dup
    item = dup["items"][0]
    assert item["message"] == f"shadowpkg 1.0 in {old} (on PYTHONPATH) shadows shadowpkg 2.0 in site-packages"
    assert item["remedy"]["fix_id"] is None and item["remedy"]["command"] is None
    assert f"Remove {old} from PYTHONPATH (no automatic fix" in item["remedy"]["text"]
    # The remedy applied: PYTHONPATH without that folder.
    assert results(tmp_path, py, "packages.duplicates")["packages.duplicates"]["status"] == "ok"
    assert imports(py, "shadowpkg") == "2.0"


def test_pth_edit_refused_with_the_reason_when_not_writable(tmp_path, monkeypatch):
    """Run as root, every file is writable: the refusal is driven through os.access (the one fake)."""
    from envdoctor.repair.plan import plan_pth_edit
    from envdoctor.system import System
    pth = tmp_path / "x.pth"
    pth.write_text("import sys; sys.path.insert(0, '/opt/old')\n")
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != pth)
    plan = plan_pth_edit([{"file": str(pth), "line": 1, "text": "import sys; sys.path.insert(0, '/opt/old')"}],
                         pyenv(), None, System())
    assert plan.edits == [] and plan.targets == []
    assert "is not writable by this user" in plan.notes[0]
    runnable, refused = refusals.split([plan], pyenv())
    assert runnable == [] and "not writable" in refused[0][1]


# --- PEP 668 ---------------------------------------------------------------------------------------------

def test_fix_refuses_pip_on_an_externally_managed_interpreter():
    system_py = pyenv(dist("torch", "2.8.0"), executable="/usr/bin/python3", version=(3, 11, 2), in_venv=False,
                      externally_managed=True, prefix="/usr", base_prefix="/usr")
    plan = Plan("packages.install-missing", "t", [Step("install x", "pip-install.sh", ["x"])], [])
    runnable, refused = refusals.split([plan], system_py)
    assert runnable == []
    why = refused[0][1]
    assert "externally managed (PEP 668" in why and "envdoctor install --venv" in why
    assert "/usr/bin/python3 -m venv" in why and "python3.11-venv" in why and "3.12" not in why
    in_venv = pyenv(externally_managed=True)                          # a venv of such a Python is fine
    assert refusals.split([plan], in_venv) == ([plan], [])


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no system Python here")
def test_real_system_python_fix_refuses_or_has_nothing_to_do(tmp_path):
    probe = subprocess.run(["/usr/bin/python3", "-c", "import sysconfig, os; print(os.path.exists(os.path.join("
                            "sysconfig.get_paths()['stdlib'], 'EXTERNALLY-MANAGED')))"],
                           capture_output=True, text=True)
    if probe.stdout.strip() != "True":
        pytest.skip("the system Python here is not marked externally managed")
    res = envdoctor(tmp_path, "fix", "packages.install-missing", "--dry-run", "--python", "/usr/bin/python3")
    assert "Nothing to fix" in res.stdout or (res.returncode == 1 and "refused" in res.stdout and
                                             "envdoctor install --venv" in res.stdout), res.stdout
    env = results(tmp_path, Path("/usr/bin/python3"), "python.environment")["python.environment"]
    assert env["remedy"]["command"].startswith("/usr/bin/python3 -m venv")
