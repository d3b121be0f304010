"""The scan cache: an entry holds only while its file is the very file it was computed from."""

from __future__ import annotations

import json
import os
import shutil
import venv

from elfbuild import build_site

from envdoctor.cache import FileCache
from envdoctor.context import Context
from envdoctor.facts.binaries import probe_binaries
from envdoctor.facts.python_env import probe_python
from envdoctor.facts.torch_build import probe_torch
from envdoctor.system import System


def _system(tmp_path) -> System:
    return System(env={"HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}, cwd=str(tmp_path))


def test_an_entry_survives_a_new_process_while_the_file_is_unchanged(tmp_path):
    f = tmp_path / "lib.so"
    f.write_bytes(b"x" * 100)
    cache = FileCache(_system(tmp_path), "t")
    cache.put(str(f), {"needed": ["libc.so.6"]})
    cache.save()
    assert FileCache(_system(tmp_path), "t").get(str(f)) == {"needed": ["libc.so.6"]}


def test_a_rewritten_file_misses(tmp_path):
    f = tmp_path / "lib.so"
    f.write_bytes(b"x" * 100)
    cache = FileCache(_system(tmp_path), "t")
    cache.put(str(f), "old")
    f.write_bytes(b"y" * 101)
    assert cache.get(str(f)) is None


def test_a_replaced_file_with_the_same_size_and_mtime_misses(tmp_path):
    """A reinstall can restore size and mtime (wheels carry mtimes); the inode still differs."""
    f = tmp_path / "lib.so"
    f.write_bytes(b"x" * 100)
    st = os.stat(f)
    cache = FileCache(_system(tmp_path), "t")
    cache.put(str(f), "old")
    new = tmp_path / "new.so"
    new.write_bytes(b"z" * 100)
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, f)
    assert os.stat(f).st_size == st.st_size and os.stat(f).st_mtime_ns == st.st_mtime_ns
    assert cache.get(str(f)) is None


def test_one_entry_per_path_and_gone_files_are_forgotten(tmp_path):
    system = _system(tmp_path)
    keep, gone = tmp_path / "keep.so", tmp_path / "gone.so"
    keep.write_bytes(b"k")
    gone.write_bytes(b"g")
    cache = FileCache(system, "t")
    cache.put(str(keep), 1)
    cache.put(str(gone), 2)
    keep.write_bytes(b"kk")
    cache.put(str(keep), 3)  # replaces the entry of the older content
    gone.unlink()
    cache.save()
    data = json.loads((tmp_path / "home/.cache/envdoctor/t-v2.json").read_text())
    assert list(data["entries"]) == [str(keep)] and data["entries"][str(keep)][3] == 3


def test_a_corrupt_or_old_cache_is_ignored_and_the_old_one_removed(tmp_path):
    system = _system(tmp_path)
    folder = tmp_path / "home/.cache/envdoctor"
    folder.mkdir(parents=True)
    (folder / "t-v2.json").write_text("{not json")
    (folder / "t.json").write_text("{}")  # version 1
    f = tmp_path / "a.so"
    f.write_bytes(b"a")
    cache = FileCache(system, "t")
    assert cache.get(str(f)) is None
    cache.put(str(f), "v")
    cache.save()
    assert not (folder / "t.json").exists()
    assert FileCache(system, "t").get(str(f)) == "v"


def test_an_extension_rebuilt_after_a_scan_is_read_again(tmp_path):
    """The binaries facts come from the cache on a second run, and stop coming from it for the one file
    that changed: the rebuilt extension's new problem shows at once."""
    built = build_site(tmp_path / "site", tmp_path / "build")
    venv.EnvBuilder(with_pip=False).create(tmp_path / "venv")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "site"), "PYTHONNOUSERSITE": "1",
           "HOME": str(tmp_path / "home")}
    system = System(env=env, cwd=str(tmp_path))
    ctx = Context(python=str(tmp_path / "venv" / "bin" / "python"), python_reason="test", smoke_timeout=60)
    py = probe_python(system, ctx)
    torch = probe_torch(system, ctx, py)

    ran: list[str] = []
    real_run = system.run
    system.run = lambda argv, **kw: (ran.append(argv[0]), real_run(argv, **kw))[1]

    def missing() -> dict[str, list[str]]:
        facts = probe_binaries(system, ctx, py, torch)
        return facts.from_cache, {e.path.rsplit("/", 1)[-1]: [m["mangled"] for m in e.missing] for e in facts.extensions}

    _, first = missing()
    assert any(r.endswith("ldconfig") for r in ran)
    ran.clear()
    cached, again = missing()
    assert cached == 4 and again == first and first["ext_ok.so"] == []
    assert not any(r.endswith("ldconfig") for r in ran)  # /etc/ld.so.cache unchanged: its parse is cached
    shutil.copyfile(built["old"], built["ok"])  # "ok" rebuilt against the older header
    cached, after = missing()
    assert cached == 3 and after["ext_ok.so"] == first["ext_old.so"] != []
    # A new extension listed in RECORD (a reinstall): the RECORD changed, so its cached file list is not used.
    shutil.copyfile(built["abi"], built["abi"].with_name("ext_new.so"))
    record = tmp_path / "site" / "fakeext-1.0.dist-info" / "RECORD"
    record.write_text(record.read_text() + "fakeext/ext_new.so,,\n")
    cached, after = missing()
    assert cached == 4 and "ext_new.so" in after
