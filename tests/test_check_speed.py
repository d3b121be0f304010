"""What keeps `envdoctor check` fast, held structurally (never by the clock): the modules a plain check
loads, the probe started in the calling thread, and redaction's shortcuts giving the regexes' own answer."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from envdoctor import redact
from envdoctor.facts import prestart
from envdoctor.system import CommandResult, System

# Loaded only by the checks and verbs that use them (--config, --model, --recipe, --deep, train, fix, a
# crash): a plain check that imports one of these again pays for it on every run.
NOT_FOR_A_PLAIN_CHECK = (
    "torch", "yaml", "datetime", "difflib", "concurrent.futures",
    "envdoctor.training", "envdoctor.recipes", "envdoctor.facts.train_config", "envdoctor.facts.train_inputs",
    "envdoctor.facts.model_dir", "envdoctor.facts.stack_imports", "envdoctor.facts.imports",
    "envdoctor.safetensors_header", "envdoctor.repair.plan", "envdoctor.repair.apply",
)
WSL_ONLY = ("envdoctor.wslconfig", "envdoctor.wslini")


def _on_wsl() -> bool:
    try:
        with open("/proc/version", encoding="utf-8") as fh:
            return "microsoft" in fh.read().lower()
    except OSError:
        return False


def test_a_plain_check_loads_only_what_its_checks_use(tmp_path):
    script = ("import sys\nfrom envdoctor.cli import main\ncode = main(sys.argv[1:])\n"
              "sys.stderr.write('MODULES ' + ' '.join(sorted(sys.modules)) + '\\n')\n")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", script, "check", "--json", "--python", sys.executable],
                          capture_output=True, text=True, env=env, timeout=120)
    report = json.loads(proc.stdout)
    assert proc.returncode in (0, 1) and report["summary"]["exit_code"] == proc.returncode
    loaded = set(re.search(r"^MODULES (.*)$", proc.stderr, re.M)[1].split())
    banned = NOT_FOR_A_PLAIN_CHECK + (() if _on_wsl() else WSL_ONLY)
    hits = sorted(m for m in loaded if any(m == b or m.startswith(b + ".") for b in banned))
    assert hits == []
    assert "envdoctor.checks.packages" in loaded and "envdoctor.report.json_report" in loaded  # it did run
    remedies = [r["remedy"] for r in report["results"]] + [i["remedy"] for r in report["results"] for i in r["items"]]
    if not any(rem and rem.get("fix_id") for rem in remedies):  # no fix request built: none loaded
        assert not {"envdoctor.repair.requests", "envdoctor.local_build"} & loaded


def test_the_command_leaves_fast_with_everything_written(tmp_path):
    # `python -m envdoctor check` ends in os._exit: the whole report must be out first, under its exit code.
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    for extra in ([], ["--strict"]):
        proc = subprocess.run([sys.executable, "-m", "envdoctor", "check", "--json", "--python", sys.executable,
                               *extra], capture_output=True, text=True, env=env, timeout=120)
        report = json.loads(proc.stdout)
        assert proc.stdout.endswith("}\n") and report["summary"]["exit_code"] == proc.returncode
    usage = subprocess.run([sys.executable, "-m", "envdoctor", "check", "--only", "nope.nothing"],
                           capture_output=True, text=True, env=env, timeout=120)
    assert usage.returncode == 2 and "unknown check 'nope.nothing'" in usage.stderr


def test_version_loads_no_check_machinery():
    proc = subprocess.run([sys.executable, "-c", "import sys\nfrom envdoctor.cli import main\n"
                           "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
                           "print(' '.join(sorted(sys.modules)))"], capture_output=True, text=True, timeout=60)
    loaded = set(proc.stdout.split())
    assert "envdoctor" in loaded
    assert not {"envdoctor.engine", "envdoctor.registry", "packaging", "dataclasses"} & loaded


def test_spawn_starts_now_and_waits_like_run():
    system = System()
    argv = [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"]
    wait = system.spawn(argv, timeout=30)
    res, ran = wait(), system.run(argv, timeout=30)
    assert (res.returncode, res.stdout, res.stderr) == (ran.returncode, ran.stdout, ran.stderr) == (3, "out\n", "err\n")
    slow = system.spawn([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)()
    assert slow.timed_out and slow.returncode is None
    missing = system.spawn(["/does/not/exist/python"], timeout=5)()
    assert missing.returncode is None and "No such file" in missing.error


def test_prestart_hands_over_a_scripted_run_once():
    class Scripted(System):  # a machine whose commands are scripted: spawn waits through its run
        calls: list = []

        def run(self, argv, timeout, input=None, env=None):
            self.calls.append(tuple(argv))
            return CommandResult(tuple(argv), 0, "probe-output", "", 0.0)

    system, argv = Scripted(), ["/t/python", "-c", "probe"]
    prestart.start(system, argv, 5.0)
    prestart.start(system, argv, 5.0)  # the same command twice: started once
    assert prestart.take(system, argv).stdout == "probe-output"
    assert prestart.take(system, argv) is None  # taken: a second caller probes again
    assert system.calls == [tuple(argv)]


def _every_regex(text: str) -> str:
    """redact_text as it was before its shortcuts: every regex, on every string."""
    text = redact._URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{redact.MASK}@", text)
    text = redact._ASSIGNED.sub(lambda m: f"{m['name']}={redact.MASK}", text)
    return redact._TOKENS.sub(redact.MASK, text)


PIECES = ["hf_", "ghp_", "github_pat_", "sk-", "wandb_v1_", "AKIA", "ABCDEFGHIJKLMNOP", "abcdefghij0123456789xyz",
          "=", "TOKEN", "token", "Api_Key", "apikey", "secret", "sig", "Signature", "auth", "credentials", "passwd",
          "https://", "user:pw@", "git@", "@", "://", " ", ";", "&", "?", "/", ".", "-", "_", "numpy>=1.17",
          'extra == "x"', "ſecret", "K", "İ", "é"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES) | st.text(max_size=4), max_size=12).map("".join))
def test_redact_text_shortcuts_change_nothing(text):
    assert redact.redact_text(text) == _every_regex(text)


def test_redact_text_shortcuts_on_the_edge_cases():
    # re.I folds "ſ" onto "s" and the Kelvin sign onto "k"; str.lower() does not: non-ASCII text takes the regex.
    for text in ("ſecret=abc", "api_\u212aey=abc", "toKEN=1", "a=1 b=2 auth=3", "x.sig=1;y", "=token=",
                 "s3://u@h", "u@h://", "HF_hf_abcdefghijklmnopqrstuvw", "ghs_abcdefghijklmnopqrstuvwxyz",
                 "AKIA0123456789ABCDEF", "akia0123456789abcdef", ""):
        assert redact.redact_text(text) == _every_regex(text), text


def test_redact_text_still_masks():
    assert redact.redact_text("https://u:p@x.org/s?token=abc&sig=zz") == "https://***@x.org/s?token=***&sig=***"
    assert redact.redact_text("HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyz1234") == "HF_TOKEN=***"
    assert redact.redact_text("numpy>=1.17; extra == \"test\"") == "numpy>=1.17; extra == \"test\""


def test_the_fast_exit_keeps_the_exit_code_when_a_stream_is_closed(tmp_path):
    # `envdoctor check >&-` (or 2>&-): Python sets sys.stdout (sys.stderr) to None. The exit code is main's,
    # never a traceback from flushing a stream that is not there.
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    for fd in (1, 2):
        proc = subprocess.run([sys.executable, "-m", "envdoctor", "check", "--python", str(tmp_path / "nope")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, timeout=120,
                              preexec_fn=lambda fd=fd: os.close(fd))
        assert proc.returncode == 2, (fd, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stdout + proc.stderr


def test_every_lazily_named_provider_resolves_to_its_function():
    # "module:function" strings are imported only when their facts are first gathered: a typo or a renamed
    # function would surface only on the machine (and with the option) that needs it. Each resolves here.
    from envdoctor import registry
    checks = registry.load()
    needed = {n for c in checks.values() for n in c.needs}
    for p in registry.PROVIDERS.values():
        fn = p.function()
        assert callable(fn) and (isinstance(p.fn, str) and fn.__name__ == p.fn.partition(":")[2] or callable(p.fn))
        assert p.name in needed and p.owner in checks, p.name


def test_a_report_to_a_closed_stdout_is_dropped_not_a_crash(tmp_path):
    # `envdoctor check >&-` (cron, a daemon): nothing to write to, as with a reader that went away; the exit
    # code still says whether the checks passed.
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    for verb in (["check", "--only", "system.os"], ["checks"]):
        proc = subprocess.run([sys.executable, "-m", "envdoctor", *verb], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, timeout=120,
                              preexec_fn=lambda: os.close(1))
        assert proc.returncode == 0 and proc.stderr == "", (verb, proc.stderr)
