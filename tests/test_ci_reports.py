"""CI and fleet outputs: the JUnit file (parsed back), GitHub annotations, the documented workflow, and
`envdoctor report merge` over crafted node reports that differ."""

import copy
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

from envdoctor.model import Remedy, Result, Status
from envdoctor.report import github, junit

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "NO_COLOR": "1"}


def envdoctor(*args, cwd):
    return subprocess.run([sys.executable, "-m", "envdoctor", *args], capture_output=True, text=True, cwd=cwd,
                          env=ENV, timeout=300)


def result(cid, status, message, remedy=None, details=()):
    return Result(status, message, list(details), remedy, check_id=cid, title="T " + cid,
                  category=cid.split(".")[0].title())


RESULTS = [result("gpu.driver", Status.OK, "driver 580"),
           result("gpu.arch", Status.FAIL, "RTX 5090 (sm_120): torch 2.6.0+cu126 has no kernels",
                  Remedy(command="pip install torch==2.7.1 --index-url https://download.pytorch.org/whl/cu128")),
           result("system.swap", Status.WARN, "no swap"),
           result("deep.torch", Status.ERROR, "check crashed: KeyError"),
           result("wsl.version", Status.SKIP, "not WSL")]


def test_junit_has_one_case_per_check_with_failures_errors_and_skips():
    root = ET.fromstring(junit.build(RESULTS, 1.5, strict=False, hostname="node01"))
    suite = root.find("testsuite")
    assert suite.get("hostname") == "node01"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("5", "1", "1", "1")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert list(cases) == [r.check_id for r in RESULTS]
    failure = cases["gpu.arch"].find("failure")
    assert failure.get("message").startswith("RTX 5090") and "cu128" in failure.text
    assert cases["deep.torch"].find("error") is not None and cases["wsl.version"].find("skipped") is not None
    assert cases["system.swap"].find("failure") is None and cases["system.swap"].find("system-out").text == "no swap"
    strict = ET.fromstring(junit.build(RESULTS, 1.5, strict=True, hostname="n")).find("testsuite")
    assert strict.get("failures") == "2"


def test_junit_from_a_real_run_matches_its_json(tmp_path):
    res = envdoctor("check", "--only", "python", "system", "--junit", str(tmp_path / "j.xml"), "--json", cwd=tmp_path)
    report = json.loads(res.stdout)
    cases = ET.parse(tmp_path / "j.xml").getroot().find("testsuite").findall("testcase")
    assert [c.get("name") for c in cases] == [r["id"] for r in report["results"]]
    assert report["node"]["hostname"]


def test_github_annotations_are_escaped_and_only_for_problems():
    lines = github.annotations([result("a.b", Status.FAIL, "50% done\nsecond line", Remedy(text="do: this, then that")),
                                result("c.d", Status.OK, "fine"), result("e.f", Status.WARN, "careful")])
    assert lines == ["::error title=envdoctor a.b::50%25 done%0Asecond line%0Afix: do: this, then that",
                     "::warning title=envdoctor e.f::careful"]


def test_the_documented_workflow_fails_on_failures_and_keeps_the_reports():
    wf = yaml.safe_load((ROOT / "examples" / "github-preflight.yml").read_text())
    steps = wf["jobs"]["preflight"]["steps"]
    run = "\n".join(s.get("run", "") for s in steps)
    assert "--format github --junit envdoctor-junit.xml" in run and "--json > envdoctor-report.json" in run
    keep = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact")][0]
    assert keep["if"] == "always()" and "envdoctor-report.json" in keep["with"]["path"]


def node_reports(tmp_path) -> list[Path]:
    res = envdoctor("check", "--only", "python", "gpu", "--json", cwd=tmp_path)
    base = json.loads(res.stdout)
    paths = []
    for name in ("node01", "node02", "node03"):
        r = copy.deepcopy(base)
        r["node"] = {"hostname": name}
        r["facts"]["gpu"] = {"driver": "580.65.06", "gpus": [{"name": "NVIDIA H100", "cc": [9, 0]}] * 8}
        r["facts"]["torch"] = {"installed": True, "version": "2.8.0+cu128", "cuda": "12.8"}
        r["facts"]["python"]["distributions"] = [{"name": "peft", "version": "0.17.1"},
                                                 {"name": "bitsandbytes", "version": "0.48.2"}]
        if name == "node02":  # an older driver and another torch build
            r["facts"]["gpu"]["driver"] = "550.54.15"
            r["facts"]["torch"]["version"] = "2.6.0+cu124"
        if name == "node03":  # a package missing and a failing check
            r["facts"]["python"]["distributions"] = [{"name": "peft", "version": "0.17.1"}]
            r["results"].append({"id": "packages.requirements", "status": "fail", "message": "1 missing"})
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(r))
        paths.append(p)
    return paths


def test_report_merge_shows_which_nodes_differ_in_what(tmp_path):
    paths = node_reports(tmp_path)
    res = envdoctor("report", "merge", *map(str, paths), cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    rows = {line.split()[0] + (" " + line.split()[1] if line.startswith(("pkg", "check")) else ""): line
            for line in res.stdout.splitlines()[2:-1]}
    assert "550.54.15" in rows["driver"] and rows["driver"].count("580.65.06") == 2
    assert "2.6.0+cu124" in rows["torch"]
    assert "—" in rows["pkg bitsandbytes"] and "fail: 1 missing" in rows["check packages.requirements"]
    assert "gpus" not in rows and "failing checks on: node03" in res.stdout
    data = json.loads(envdoctor("report", "merge", *map(str, paths), "--json", cwd=tmp_path).stdout)
    assert data["differences"]["driver"] == {"node01": "580.65.06", "node02": "550.54.15", "node03": "580.65.06"}


def test_report_merge_reads_pdsh_output_and_names_a_bad_file(tmp_path):
    paths = node_reports(tmp_path)
    pdsh = tmp_path / "pdsh.txt"
    pdsh.write_text("".join(f"{p.stem}: {json.dumps(json.loads(p.read_text()))}\n" for p in paths[:2]))
    res = envdoctor("report", "merge", str(pdsh), cwd=tmp_path)
    assert res.stdout.startswith("2 node(s): node01, node02") and "550.54.15" in res.stdout
    same = envdoctor("report", "merge", str(paths[0]), str(paths[0]), cwd=tmp_path)
    assert same.returncode == 0 and "node01#1, node01#2" in same.stdout and "identical" in same.stdout
    bad = tmp_path / "bad.json"
    bad.write_text("not json at all")
    res = envdoctor("report", "merge", str(bad), cwd=tmp_path)
    assert res.returncode == 2 and str(bad) in res.stderr and "Traceback" not in res.stderr


def test_junit_to_a_path_that_cannot_be_written_is_a_usage_error(tmp_path):
    (tmp_path / "a-file").write_text("")  # a file where the report's folder would be
    res = envdoctor("check", "--only", "system.os", "--junit", str(tmp_path / "a-file" / "report.xml"), cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith(f"envdoctor: --junit {tmp_path / 'a-file' / 'report.xml'}: cannot write it")
