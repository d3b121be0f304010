"""The stdlib probe, run for real by an interpreter over crafted site-packages folders."""

import sys

import pytest

from envdoctor.context import Context
from envdoctor.errors import FactError
from envdoctor.facts.python_env import probe_python
from envdoctor.system import System


def write_dist(site, name, version, requires=(), record=True, meta=None, installer="pip"):
    d = site / f"{name}-{version}.dist-info"
    d.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    (d / "METADATA").write_text(meta if meta is not None else "\n".join(lines) + "\n\nLong: body: text\n")
    if record:
        (d / "RECORD").write_text(f"{name}/__init__.py,,\n")
    if installer:
        (d / "INSTALLER").write_text(installer + "\n")
    return d


def probe(tmp_path, *sites, **kw):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(str(s) for s in sites), "PYTHONNOUSERSITE": "1"}
    system = System(env=env, cwd=str(tmp_path))
    return probe_python(system, Context(python=sys.executable, python_reason="test"), **kw)


def test_probe_reads_metadata_without_importing(tmp_path):
    site = tmp_path / "site"
    write_dist(site, "alpha", "1.0", ["beta>=2", 'gamma; extra == "x"'])
    (site / "alpha").mkdir()
    (site / "alpha" / "__init__.py").write_text("raise SystemExit('imported!')\n")
    egg = site / "legacy.egg-info"
    egg.mkdir()
    (egg / "PKG-INFO").write_text("Metadata-Version: 1.1\nName: legacy\nVersion: 0.5\n")
    (egg / "requires.txt").write_text("six\n\n[test]\npytest>=7\n\n[:sys_platform == \"win32\"]\npywin32\n")
    (site / "direct-1.0.dist-info").mkdir()
    (site / "direct-1.0.dist-info" / "METADATA").write_text("Name: direct\nVersion: 1.0\n")
    (site / "direct-1.0.dist-info" / "direct_url.json").write_text(
        '{"url": "https://user:ghp_abcdefghijklmnopqrstuvwxyz0123@github.com/o/r.git", "vcs_info": {"vcs": "git"}}')
    env = probe(tmp_path, site, with_files=True)
    alpha = env.get("alpha")
    assert alpha.version == "1.0" and alpha.requires == ["beta>=2", 'gamma; extra == "x"']
    assert alpha.installer == "pip" and alpha.files == ["alpha/__init__.py"] and alpha.location == str(site)
    legacy = env.get("Legacy")
    assert legacy.kind == "egg-info"
    assert legacy.requires == ["six", 'pytest>=7; extra == "test"', 'pywin32; (sys_platform == "win32")']
    assert env.get("direct").direct_url["vcs_info"]["vcs"] == "git"
    assert env.executable == sys.executable and env.markers["python_version"] == "%d.%d" % sys.version_info[:2]


def test_probe_reports_broken_metadata_duplicates_and_strays(tmp_path):
    site, user = tmp_path / "site", tmp_path / "user"
    write_dist(site, "torch", "2.8.0")
    write_dist(site, "torch", "2.7.0")
    write_dist(user, "torch", "2.6.0")
    write_dist(site, "noversion", "1", meta="Metadata-Version: 2.1\nName: noversion\n")
    write_dist(site, "garbled", "1", meta="Metadata-Version 2.1 no colon here\n")
    (site / "~orch").mkdir()
    env = probe(tmp_path, site, user)
    ours = [d for d in env.installs("torch") if d.location.startswith(str(tmp_path))]
    assert [d.version for d in ours] == ["2.7.0", "2.8.0", "2.6.0"]  # sys.path order, then name order
    assert env.get("noversion").problems == ["METADATA has no Version"]
    garbled = [d for d in env.distributions if d.dir_name == "garbled"][0]
    assert garbled.name is None and "malformed header line" in garbled.problems[0]
    assert env.strays == [str(site / "~orch")]


def test_probe_of_a_broken_interpreter_is_a_fact_error(tmp_path):
    bad = tmp_path / "python"
    bad.write_text("#!/bin/sh\necho 'Fatal Python error: init_fs_encoding' >&2\nexit 1\n")
    bad.chmod(0o755)
    with pytest.raises(FactError, match="exit code 1\nFatal Python error"):
        probe_python(System(), Context(python=str(bad), python_reason="test"))
    slow = tmp_path / "slow"
    slow.write_text("#!/bin/sh\nsleep 5\n")
    slow.chmod(0o755)
    with pytest.raises(FactError, match="timed out"):
        probe_python(System(), Context(python=str(slow), python_reason="test", probe_timeout=0.3))


def test_missing_files_names_every_gone_record_entry_and_only_those(tmp_path):
    """torch's RECORD check (a damaged install), read one folder at a time: files in nested folders, at the
    top, in a folder that is gone, and a dangling symlink (present: pip records links as files)."""
    from envdoctor.target import probe  # the script the target interpreter runs
    site = tmp_path / "site"
    (site / "torch" / "nn").mkdir(parents=True)
    (site / "torch" / "nn" / "a.py").write_text("")
    (site / "top.pth").write_text("")
    (site / "torch" / "link.so").symlink_to(site / "nowhere")
    record = tmp_path / "RECORD"
    record.write_text("torch/nn/a.py,sha256=x,1\ntorch/nn/b.py,,\ntop.pth,,\ngone.txt,,\ntorch/link.so,,\n"
                      "torch/nn/__pycache__/a.cpython-311.pyc,,\ntorch/gone/c.py,,\n\n")
    assert sorted(probe.missing_files(str(site), str(record))) == ["gone.txt", "torch/gone/c.py", "torch/nn/b.py"]
