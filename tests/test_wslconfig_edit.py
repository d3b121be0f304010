""".wslconfig: the one reader (read as WSL reads it), the byte-preserving editor, `envdoctor wslconfig set`
and `fix wsl.memory` on the hostile files outside testers used, plus a property test over generated files."""

import os
import re
import string
from collections import Counter

import pytest
from envbuild import dist, pyenv
from fakes import GiB
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from wslfake import wsl_box

from envdoctor import cli
from envdoctor.checks import wsl as W
from envdoctor.context import Context
from envdoctor.facts.wsl import probe_wsl
from envdoctor.model import Status
from envdoctor.repair.apply import write_edits
from envdoctor.repair.plan import FIXES, FileEdit, Plan
from envdoctor.system import System
from envdoctor.wslconfig import read, recommend
from envdoctor.wslconfig_edit import EditError, edit_text, line_ending, plan_file
from envdoctor.wslini import decode, scan

VALUES = {"memory": "48GB", "processors": "12", "swap": "16GB"}
PY = pyenv(dist("pip", "25.2"))


def setv(tmp_path, data: bytes, updates=VALUES, mode=0o644, name=".wslconfig"):
    """Write `data`, run the editor through write_edits as `fix` and `wslconfig set` do; (plan, new bytes)."""
    s = System(tmp_path)
    p = tmp_path / name
    p.write_bytes(data)
    p.chmod(mode)
    fp = plan_file(s, f"/{name}", updates)
    write_edits(s, Plan("t", "t", [], [], edits=[FileEdit(fp.path, fp.old, fp.new, fp.diff)]), "t", lambda m: None)
    assert (tmp_path / f"{name}.envdoctor-t.bak").read_bytes() == data
    return fp, p.read_bytes()


# -- the hostile files -------------------------------------------------------------------------------
def test_spacing_trailing_blanks_and_hash_comments_stay(tmp_path):
    old = b"[wsl2]\n  memory  =  8GB   \nswap = 2GB # keep me\nprocessors\t=\t4\t\n"
    _, new = setv(tmp_path, old)
    assert new == b"[wsl2]\n  memory  =  48GB   \nswap = 16GB # keep me\nprocessors\t=\t12\t\n"


def test_semicolon_after_a_value_is_value_to_wsl_and_is_replaced_with_a_note(tmp_path):
    # WSL: only '#' starts a comment; "7GB ; inline" is the value (an invalid size, so WSL ignored it).
    old = b"[wsl2]\nmemory = 7GB ; inline\nswap=2GB\t; tab comment\n"
    assert read(old).get("wsl2", "memory") == "7GB ; inline"
    fp, new = setv(tmp_path, old, {"memory": "48GB", "swap": "16GB"})
    assert new == b"[wsl2]\nmemory = 48GB\nswap=16GB\n"
    assert any("'7GB ; inline' was all value to WSL" in n for n in fp.notes)


def test_form_feed_and_semicolon_lines_stay_and_are_only_notes(tmp_path):
    old = b"; old style note\n[wsl2]\n\x0c\nmemory=8GB\n"
    cfg = read(old)
    assert not cfg.problems and len(cfg.notes) == 2
    _, new = setv(tmp_path, old, {"memory": "48GB"})
    assert new == b"; old style note\n[wsl2]\n\x0c\nmemory=48GB\n"


@pytest.mark.parametrize("enc,bom", [("utf-8", b""), ("utf-8", b"\xef\xbb\xbf"), ("utf-16-le", b"\xff\xfe"),
                                     ("utf-16-be", b"\xfe\xff")])
def test_encoding_and_bom_stay(tmp_path, enc, bom):
    text = "# Übung 🚀\r\n[wsl2]\r\nmemory=8GB\r\n"
    fp, new = setv(tmp_path, bom + text.encode(enc))
    assert new == bom + "# Übung 🚀\r\n[wsl2]\r\nmemory=48GB\r\nprocessors=12\r\nswap=16GB\r\n".encode(enc)
    assert decode(new).encoding == enc
    assert any("WSL cannot read it" in n for n in fp.notes) == (enc == "utf-16-be")


def test_read_only_file_is_refused_and_left_alone(tmp_path):
    p = tmp_path / ".wslconfig"
    p.write_bytes(b"[wsl2]\nmemory=8GB\n")
    p.chmod(0o444)
    with pytest.raises(EditError, match=r"read-only \(mode 444\).*chmod u\+w"):
        plan_file(System(tmp_path), "/.wslconfig", VALUES)
    assert p.read_bytes() == b"[wsl2]\nmemory=8GB\n" and oct(p.stat().st_mode & 0o777) == "0o444"
    assert os.listdir(tmp_path) == [".wslconfig"]


def test_permissions_are_kept(tmp_path):
    setv(tmp_path, b"[wsl2]\nmemory=8GB\n", mode=0o600)
    assert (tmp_path / ".wslconfig").stat().st_mode & 0o777 == 0o600


def test_symlink_target_is_edited_and_the_link_stays(tmp_path):
    (tmp_path / "dotfiles").mkdir()
    target = tmp_path / "dotfiles" / "wslconfig.ini"
    target.write_bytes(b"[wsl2]\nmemory=8GB\n")
    (tmp_path / ".wslconfig").symlink_to("dotfiles/wslconfig.ini")
    s = System(tmp_path)
    fp = plan_file(s, "/.wslconfig", {"memory": "48GB"})
    assert fp.path == "/dotfiles/wslconfig.ini" and "symlink" in fp.notes[0]
    write_edits(s, Plan("t", "t", [], [], edits=[FileEdit(fp.path, fp.old, fp.new, fp.diff)]), "t", lambda m: None)
    assert (tmp_path / ".wslconfig").is_symlink() and os.readlink(tmp_path / ".wslconfig") == "dotfiles/wslconfig.ini"
    assert target.read_bytes() == b"[wsl2]\nmemory=48GB\n"
    assert (tmp_path / "dotfiles" / "wslconfig.ini.envdoctor-t.bak").read_bytes() == b"[wsl2]\nmemory=8GB\n"


def test_cr_only_file_gets_cr_only_lines(tmp_path):
    _, new = setv(tmp_path, b"[wsl2]\rmemory=8GB\r[experimental]\rsparseVhd=true\r")
    assert new == b"[wsl2]\rmemory=48GB\rprocessors=12\rswap=16GB\r[experimental]\rsparseVhd=true\r"
    assert b"\n" not in new


def test_cr_only_comment_swallows_the_rest_for_wsl_so_the_section_goes_on_top(tmp_path):
    # WSL ends a comment only at LF: everything after "# note" is never read, so that is the one place
    # left where WSL reads a new [wsl2]; the note says why.
    old = b"# note\r[wsl2]\rmemory=8GB\r"
    cfg = read(old)
    assert cfg.get("wsl2", "memory") is None and "lines 2-3" in cfg.problems[0]
    fp, new = setv(tmp_path, old, {"memory": "48GB"})
    assert new == b"[wsl2]\rmemory=48GB\r# note\r[wsl2]\rmemory=8GB\r" and read(new).get("wsl2", "memory") == "48GB"
    assert any("lines 2-3" in n for n in fp.notes)


def test_editor_refuses_when_no_place_keeps_the_other_values():
    # Sectionless keys first: a [wsl2] on top would capture them, at the end the backslash would join it.
    with pytest.raises(EditError, match="cannot add memory"):
        edit_text("kernel=x\nswap=1GB\nkernel=abc\\", {"memory": "48GB"})


def test_missing_key_goes_into_the_existing_section_in_its_style(tmp_path):
    old = b"[wsl2]\r\n    memory = 8GB\r\n    # swap later\r\n\r\n[experimental]\r\nsparseVhd=true"
    _, new = setv(tmp_path, old, {"memory": "48GB", "swap": "16GB"})
    assert new == (b"[wsl2]\r\n    memory = 48GB\r\n    swap = 16GB\r\n    # swap later\r\n\r\n[experimental]\r\n"
                   b"sparseVhd=true")


def test_missing_section_is_added_at_the_end_in_the_files_line_endings(tmp_path):
    _, new = setv(tmp_path, b"[experimental]\r\nsparseVhd = true", {"memory": "48GB"})
    assert new == b"[experimental]\r\nsparseVhd = true\r\n\r\n[wsl2]\r\nmemory = 48GB\r\n"


def test_last_line_without_newline_stays_without(tmp_path):
    _, new = setv(tmp_path, b"[wsl2]\nmemory=8GB", {"memory": "48GB", "swap": "16GB"})
    assert new == b"[wsl2]\nmemory=48GB\nswap=16GB"


def test_first_duplicate_is_the_one_wsl_uses_and_the_one_changed(tmp_path):
    old = b"[wsl2]\nmemory=8GB\nmemory=64GB\n"
    assert any("WSL uses the first" in p for p in read(old).problems)
    _, new = setv(tmp_path, old, {"memory": "48GB"})
    assert new == b"[wsl2]\nmemory=48GB\nmemory=64GB\n"


def test_quoted_and_empty_values(tmp_path):
    _, new = setv(tmp_path, b'[wsl2]\nmemory = "8GB"  # q\nswap = # none yet\n', {"memory": "48GB", "swap": "16GB"})
    assert new == b"[wsl2]\nmemory = 48GB  # q\nswap =16GB # none yet\n"


def test_a_key_after_a_line_continuation_is_not_swallowed(tmp_path):
    # "kernel=C:\\k\" + newline continues the value: the new key must not land inside it.
    old = "[wsl2]\nkernel=abc\\\n\n[x]\n"
    new = edit_text(old, {"swap": "16GB"}).text
    assert scan(new).get("wsl2.kernel") == "abc" and scan(new).get("wsl2.swap") == "16GB"


def test_invalid_header_keeps_keys_in_the_section_before_it_as_wsl_does():
    cfg = read(b"[wsl2]\n[ experimental ]\nmemory=8GB\n")
    assert cfg.get("wsl2", "memory") == "8GB" and "'[ experimental ]' is skipped by WSL" in cfg.problems[0]


def test_bad_values_are_refused_before_anything_is_read(tmp_path):
    for bad, why in [({"memory": "48 GB"}, "size like 48GB"), ({"memory": "1.5GB"}, "size"),
                     ({"processors": "0"}, "above 0"), ({"swap": "8GB # x"}, "may not"), ({"mem-ory": "1"}, "not a")]:
        with pytest.raises(EditError, match=why):
            plan_file(System(tmp_path), "/nope", bad)


# -- the check reads the same encodings ------------------------------------------------------------------
def judge(s):
    return W.config(probe_wsl(s, Context("/venv/bin/python", "t")))


def test_utf16_wslconfig_is_well_formed_before_and_after_the_fix(tmp_path):
    s = wsl_box(tmp_path, vm_ram=8, wslconfig="\ufeff[wsl2]\r\nmemory=8GB\r\n".encode("utf-16-le"))
    before = judge(s)
    assert before.status == Status.OK and "(UTF-16-LE with BOM)" in before.message
    from envdoctor.facts.host import probe_host
    mem = W.memory(probe_wsl(s, Context("/venv/bin/python", "t")), probe_host(s, Context("/venv/bin/python", "t")), PY)
    plan = FIXES["wsl.memory"].planner([mem.remedy.params], PY, None, s)
    write_edits(s, plan, "t", lambda m: None)
    after = judge(s)
    assert after.status == Status.OK and "memory 48 GiB (.wslconfig)" in after.details[0]


def test_utf16_be_is_called_unreadable_by_wsl(tmp_path):
    r = judge(wsl_box(tmp_path, wslconfig=b"\xfe\xff" + "[wsl2]\nmemory=8GB\n".encode("utf-16-be")))
    assert r.status == Status.FAIL and "cannot be read by WSL" in r.message and "UTF-16-BE" in r.details[0]


def test_fix_refuses_a_read_only_wslconfig_with_the_reason(tmp_path):
    s = wsl_box(tmp_path, vm_ram=8, wslconfig=b"[wsl2]\nmemory=8GB\n")
    s.path("/mnt/c/Users/alice/.wslconfig").chmod(0o444)
    params = {"path": "/mnt/c/Users/alice/.wslconfig", "values": VALUES}
    plan = FIXES["wsl.memory"].planner([params], PY, None, s)
    assert not plan.edits and "read-only" in plan.notes[0]


def test_wsl_conf_is_read_by_the_same_reader(tmp_path):
    s = wsl_box(tmp_path)
    s.write("/etc/wsl.conf", '[automount]\r\nroot = "/win/"   # moved\r\n[interop]\r\nenabled=true\r\n')
    assert probe_wsl(s, Context("/venv/bin/python", "t")).mount_root == "/win/"


# -- envdoctor wslconfig set --------------------------------------------------------------------------------
def test_cli_set_dry_run_then_for_real(tmp_path, capsys):
    f = tmp_path / "my.wslconfig"
    f.write_bytes(b"[wsl2]\r\nmemory = 8GB # ram\r\n")
    assert cli.main(["wslconfig", "set", str(f), "memory=48GB", "processors=12", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "-memory = 8GB # ram" in out and "+memory = 48GB # ram" in out and "+processors = 12" in out
    assert f.read_bytes() == b"[wsl2]\r\nmemory = 8GB # ram\r\n" and len(os.listdir(tmp_path)) == 1
    assert cli.main(["wslconfig", "set", str(f), "memory=48GB", "processors=12"]) == 0
    assert f.read_bytes() == b"[wsl2]\r\nmemory = 48GB # ram\r\nprocessors = 12\r\n"
    backups = [n for n in os.listdir(tmp_path) if n.endswith(".bak")]
    assert len(backups) == 1 and (tmp_path / backups[0]).read_bytes() == b"[wsl2]\r\nmemory = 8GB # ram\r\n"
    assert cli.main(["wslconfig", "set", str(f), "memory=48GB"]) == 0
    assert "nothing to change" in capsys.readouterr().out


def test_cli_set_errors_are_one_line(tmp_path, capsys):
    f = tmp_path / "w"
    f.write_bytes(b"[wsl2]\n")
    assert cli.main(["wslconfig", "set", str(f), "memory=48gb"]) == 1
    assert cli.main(["wslconfig", "set", str(f), "memory"]) == 2
    err = capsys.readouterr().err
    assert "memory=48gb: WSL expects a size" in err and "expected KEY=VALUE" in err and "Traceback" not in err
    f.chmod(0o444)
    assert cli.main(["wslconfig", "set", str(f), "memory=48GB"]) == 1
    assert "read-only" in capsys.readouterr().err


# -- property test: ≥ 1,000 generated files with all of the above --------------------------------------------
blank = st.text(" \t", max_size=3)
words = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=8)
KEYS = ["memory", "Memory", "MEMORY", "swap", "processors", "kernel", "localhostForwarding", "sparseVhd"]
value = st.one_of(
    st.text(string.ascii_letters + string.digits + ".:/_-;ü ", max_size=8).map(str.strip),
    st.sampled_from(["8GB", "7GB ; inline", "512M", "0x10", "C:\\\\k", '"8GB"', '" spaced "', 'a\\"b', "", "x\\ty"]))
tail = st.one_of(st.just(""), st.builds(lambda b, w: f"{b}# {w}", blank, words),
                 st.builds(lambda b, w: f"{b}; {w}", blank, words))
kv = st.builds(lambda i, k, a, b, v, t, tr: f"{i}{k}{a}={b}{v}{t}{tr}", blank, st.sampled_from(KEYS), blank, blank,
               value, tail, blank)
line = st.one_of(kv, kv, kv,
                 st.sampled_from(["[wsl2]", "[WSL2]", "[wsl2]  # main", "[experimental]", "[boot]", "[ wsl2 ]"]),
                 st.builds(lambda c, w: c + w, st.sampled_from(["#", ";", "  # ", "\t;"]), words),
                 st.sampled_from(["", "\f", "  ", "\v", "just words", "=x", "kernel=abc\\"]))
ENCODINGS = [("utf-8", b""), ("utf-8", b"\xef\xbb\xbf"), ("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff")]


@st.composite
def wslconfigs(draw):
    lines = draw(st.lists(line, max_size=12))
    style = draw(st.sampled_from(["\r\n", "\n", "\r", "mixed"]))
    breaks = [draw(st.sampled_from(["\r\n", "\n", "\r"])) if style == "mixed" else style for _ in lines]
    text = "".join(x + b for x, b in zip(lines, breaks))
    if lines and draw(st.booleans()):
        text = text[:-len(breaks[-1])]         # no final line break
    enc, bom = draw(st.sampled_from(ENCODINGS))
    return text, enc, bom


def masked(text: str, names: list[str]) -> str:
    """`text` with the values WSL reads for `names` cut out."""
    ini = scan(text)
    spans = sorted((ini.values[n].value_start, ini.values[n].value_end) for n in names if n in ini.values)
    for start, end in reversed(spans):
        text = text[:start] + text[end:]
    return text


STATS = Counter()


@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wslconfigs(), st.integers(8, 512), st.integers(2, 64), st.permutations(["memory", "swap", "processors"]),
       st.integers(1, 3))
def test_property_only_the_values_change(tmp_path_factory, f, ram, cpus, order, n):
    text, enc, bom = f
    want = recommend(ram * GiB, cpus)
    updates = {k: want[k] for k in order[:n]}
    data = bom + text.encode(enc)
    root = tmp_path_factory.mktemp("w")
    try:
        fp, new = setv(root, data, updates, mode=0o640)     # asserts the backup equals the original
    except EditError as exc:
        # Refused only for files `envdoctor check` already calls out (WSL skips or misreads lines in them): a
        # comment or invalid line running on past CR-only line endings, keys before any section, a last line
        # ending in '\\' that any added line would continue... and no place is left where WSL would read the
        # new key without reading some other line differently.
        problems = read(data).problems
        assert problems and "cannot add" in str(exc), (text, str(exc))
        STATS["refused"] += 1
        event("refused")
        return
    finally:
        for p in root.iterdir():
            p.unlink()
    STATS["edited" if fp.changed else "unchanged (already set)"] += 1
    STATS["replaced a value WSL used"] += any(f"wsl2.{k}" in scan(text).values for k in updates)
    STATS[f"{enc}{' BOM' if bom else ''}"] += 1
    event("edited" if fp.changed else "unchanged")
    d = decode(new)
    assert (d.encoding, d.bom) == (enc, bool(bom))
    cfg = read(new)                                   # the one reader, as the check reads it
    for k, v in updates.items():
        assert cfg.get("wsl2", k) == v
    names = [f"wsl2.{k}" for k in updates]
    old_m, new_m = masked(text, names), masked(d.text, names)
    i = next((j for j, (a, b) in enumerate(zip(old_m, new_m)) if a != b), min(len(old_m), len(new_m)))
    grown = len(new_m) - len(old_m)
    assert grown >= 0 and new_m[:i] == old_m[:i] and new_m[i + grown:] == old_m[i:], "bytes other than values changed"
    inserted = new_m[i:i + grown]
    if inserted:
        STATS["added keys or a section"] += 1
        assert set(inserted) <= set("[wsl2]= \t\r\n" + "".join(updates)) and inserted.count("[wsl2]") <= 1
        nl = line_ending(text)
        assert re.sub(r"\r\n|\r|\n", lambda m: "" if m[0] == nl else "!", inserted).count("!") == 0, inserted


def test_property_stats_are_reported():
    # Runs after the property test (file order): shows how the generated files were handled.
    print("\nproperty test:", dict(STATS))
