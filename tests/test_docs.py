"""The docs cannot drift from the code: the checks reference is the registry's, the JSON schema validates
real reports, and every `envdoctor VERB --flag` written in README.md or docs/ exists."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from envdoctor import cli, registry
from envdoctor.report.checks_doc import checks_markdown

from schema_lite import errors

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "results" / "README.md"]
SCHEMA = json.loads((ROOT / "docs" / "report.schema.json").read_text(encoding="utf-8"))


def test_checks_reference_is_the_registry():
    doc = (ROOT / "docs" / "checks.md").read_text(encoding="utf-8")
    assert doc.endswith(checks_markdown(registry.load())), \
        "regenerate the table at the end of docs/checks.md: envdoctor checks --markdown"


def _check_json(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    got = subprocess.run([sys.executable, "-m", "envdoctor", "check", "--json", "--python", sys.executable, *args],
                         capture_output=True, text=True, env=env, timeout=300)
    assert got.returncode in (0, 1), got.stderr
    return json.loads(got.stdout)


def test_real_reports_match_the_documented_schema(tmp_path):
    from envdoctor.report.json_report import SCHEMA_VERSION
    bad = tmp_path / "bad.yaml"
    bad.write_text("base_model: /nowhere\nsequence_len: many\nlearning_rate: 1e-4\nunknown_key: 1\n", encoding="utf-8")
    for report in (_check_json(), _check_json("--config", str(bad), "--only", "config", "python")):
        assert errors(report, SCHEMA) == []
        assert report["schema_version"] == SCHEMA_VERSION
    assert any(r["status"] == "fail" and r["remedy"] for r in report["results"])  # the failing shapes were seen


def test_the_validator_catches_what_the_schema_forbids():
    report = _check_json("--only", "python")
    assert errors(report, SCHEMA) == []
    broken = json.loads(json.dumps(report))
    broken["results"][0]["status"] = "great"
    del broken["summary"]["exit_code"]
    broken["facts"]["python"] = {"executable": 3}
    broken["surprise"] = True
    found = "\n".join(errors(broken, SCHEMA))
    for expected in ("$.results[0].status: 'great'", "$.summary: missing 'exit_code'", "$.facts.python: matches none",
                     "unexpected key 'surprise'"):
        assert expected in found, found


# "envdoctor VERB ..." in a fenced code block or an inline code span; continuation lines joined first.
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]*envdoctor [^`\n]*)`")
COMMAND = re.compile(r"(?:^|[\s'\"(])envdoctor((?: [^\s#|;&'\"]+)*)")


def commands_in(text: str) -> list[tuple[str, list[str]]]:
    """(verb, flags) of every envdoctor command line in a Markdown text."""
    # A synopsis goes on over indented lines ("    [--skip ID…]"), a shell command after a backslash.
    snippets = [re.sub(r"\\?\n\s+(?=[\[-])", " ", b.replace("\\\n", " ")) for b in FENCE.findall(text)]
    snippets += INLINE.findall(FENCE.sub("", text))
    found = []
    for snippet in snippets:
        for line in snippet.splitlines():
            line = line.split(" # ")[0]
            for m in re.finditer(r"(?:^|[\s'\"(`])envdoctor (?=[a-z-])(.*)", line):
                rest = m.group(1).split("envdoctor ")[0]
                words = rest.split()
                verb = words[0].strip("'\"`") if words else ""
                if not re.fullmatch(r"[a-z][a-z-]*|-.*", verb):
                    continue  # prose in a text block ("without envdoctor installed:"), not a command
                found.append(("" if verb.startswith("-") else verb, re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", rest)))
    return found


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(file, verb, flags) for every envdoctor command line in the docs."""
    return [(path.name, verb, flags) for path in DOCS for verb, flags in commands_in(path.read_text(encoding="utf-8"))]


def test_the_command_reader_sees_synopses_inline_code_and_continued_lines():
    text = ("Run `envdoctor check --problems`.\n\n```text\nenvdoctor train CONFIG [--resume]\n"
            "                [--nnodes N]   # comment --not-a-flag\nsrun bash -c 'envdoctor merge RUN \\\n"
            "  --dtype float16'\nenvdoctor 0.1.0 · /usr/bin/python\n```\n")
    assert commands_in(text) == [("train", ["--resume", "--nnodes"]), ("merge", ["--dtype"]),
                                 ("check", ["--problems"])]


def _parsers():
    top = cli.build_parser()
    sub = next(a for a in top._actions if a.__class__.__name__ == "_SubParsersAction")
    return top, sub.choices


def test_every_documented_command_and_flag_exists():
    top, verbs = _parsers()
    seen = documented_commands()
    assert len({v for _, v, _ in seen}) >= 9, "the docs name (almost) every verb"
    wrong = []
    for name, verb, flags in seen:
        parser = verbs.get(verb, top) if verb else top
        if verb and verb not in verbs:
            wrong.append(f"{name}: envdoctor {verb}: no such command")
            continue
        wrong += [f"{name}: envdoctor {verb} {f}: no such option" for f in flags
                  if f not in parser._option_string_actions]
    assert not wrong, "\n".join(sorted(set(wrong)))


@pytest.mark.parametrize("verb", sorted({v for _, v, _ in documented_commands() if v}))
def test_documented_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([verb, "--help"])
    assert exit_.value.code == 0 and f"envdoctor {verb}" in capsys.readouterr().out


def test_relative_links_point_at_files_that_exist():
    missing = []
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", FENCE.sub("", path.read_text(encoding="utf-8"))):
            if not re.match(r"[a-z]+:", target) and not (path.parent / target).exists():
                missing.append(f"{path.relative_to(ROOT)}: {target}")
    assert not missing, missing


def test_every_remedy_row_names_tests_that_exist():
    """docs/remedies.md: each finding class's row names the test that proves its remedy, and each named
    test (`tests/file.py::name`, `::name` for the same file, `[param]` dropped) is defined there."""
    root = ROOT
    rows = [line for line in (root / "docs" / "remedies.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| finding")]
    assert len(rows) >= 12
    for row in rows:
        proof = row.rstrip(" |").rsplit(" | ", 1)[-1]
        refs = re.findall(r"(tests/[\w/]+\.py)?::(\w+)|(tests/[\w/]+\.py)", proof)
        assert refs, f"no test named in: {row[:80]}"
        current = None
        for file, name, bare in refs:
            current = file or bare or current
            assert current and (root / current).is_file(), f"{current}: no such file ({row[:60]})"
            if name:
                assert re.search(rf"^def {name}\(", (root / current).read_text(), re.M), f"{current}::{name}"


def test_every_fix_id_is_documented():
    from envdoctor.repair.plan import FIXES
    text = (ROOT / "docs" / "fixes.md").read_text()
    assert [f for f in FIXES if f"| `{f}` |" not in text] == []
