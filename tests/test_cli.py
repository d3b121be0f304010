"""CLI: selection, exit codes, usage errors, the checks listing, JSON."""

import json
import sys

import pytest

from envdoctor import cli, registry
from envdoctor.commands.check import select
from envdoctor.errors import UsageError


def test_select_by_id_prefix_glob_and_skip():
    checks = registry.load()
    ids = [c.id for c in select(checks, ["packages"], ["packages.pip"])]
    assert "packages.requirements" in ids and "packages.pip" not in ids and "system.os" not in ids
    assert [c.id for c in select(checks, ["system.d*"], [])] == ["system.disk"]
    with pytest.raises(UsageError, match="did you mean system.disk"):
        select(checks, ["system.dsk"], [])


def test_usage_errors_exit_2(capsys):
    assert cli.main(["check", "--only", "nope.nothing"]) == 2
    assert "unknown check 'nope.nothing'" in capsys.readouterr().err
    assert cli.main(["check", "--python", "/does/not/exist/python"]) == 2
    assert "no such interpreter" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["check", "--bogus"])
    assert exc.value.code == 2
    assert cli.main([]) == 2


def test_checks_lists_every_check(capsys):
    assert cli.main(["checks"]) == 0
    out = capsys.readouterr().out
    for cid, c in registry.load().items():
        assert cid in out and c.title in out


def test_json_report_for_this_interpreter(capsys):
    code = cli.main(["check", "--json", "--python", sys.executable, "--only", "python", "packages.pip"])
    data = json.loads(capsys.readouterr().out)
    assert data["schema_version"] == 5 and data["summary"]["exit_code"] == code
    assert {r["id"] for r in data["results"]} == {"python.interpreter", "python.version",
                                                  "python.environment", "packages.pip"}
    assert set(data["facts"]) == {"python"}  # only the facts the selected checks used
    assert data["facts"]["python"]["executable"] == sys.executable
    assert data["target"]["python"] == sys.executable


def test_strict_turns_warnings_into_exit_1(monkeypatch, capsys):
    from envdoctor.model import warn
    from envdoctor.registry import Check
    real = registry.load()
    monkeypatch.setattr(registry, "load", lambda: {**real, "zz.w": Check(
        "zz.w", "W", "Test", "w", (), lambda: warn("meh"))})
    assert cli.main(["check", "--only", "zz.w"]) == 0
    assert cli.main(["check", "--only", "zz.w", "--strict"]) == 1


def test_python_defaults_to_active_venv(tmp_path):
    from envdoctor.context import choose_python
    venv = tmp_path / "v"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    path, why = choose_python(None, {"VIRTUAL_ENV": str(venv)})
    assert path == str(venv / "bin" / "python") and why.startswith("active virtualenv")
    path, why = choose_python(str(venv), {})
    assert path == str(venv / "bin" / "python")
    path, why = choose_python(None, {})
    assert path == sys.executable
