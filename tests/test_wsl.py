"""WSL: facts and checks on fake WSL machines, and the fix (the editor itself: test_wslconfig_edit.py)."""

from envbuild import dist, pyenv
from fakes import GiB, linux_box
from wslfake import wsl_box

from envdoctor.checks import wsl as W
from envdoctor.context import Context
from envdoctor.facts.host import probe_host
from envdoctor.facts.wsl import probe_wsl, windows_to_linux
from envdoctor.model import Status
from envdoctor.repair.apply import write_edits
from envdoctor.repair.plan import FIXES
from envdoctor.wslconfig import effective, parse, recommend

CTX = Context("/venv/bin/python", "t")
PY = pyenv(dist("pip", "25.2"))


def judge(system):
    wsl, host = probe_wsl(system, CTX), probe_host(system, CTX)
    return wsl, {"version": W.version(wsl), "config": W.config(wsl), "memory": W.memory(wsl, host, PY),
                 "driver": W.driver(wsl), "libcuda": W.libcuda(wsl), "nvidia_smi": W.nvidia_smi(wsl)}


def test_not_wsl_skips_quietly(tmp_path):
    _, res = judge(linux_box(tmp_path))
    assert all(r.status == Status.SKIP and r.quiet and r.message == "not WSL" for r in res.values())


def test_wsl1_fails(tmp_path):
    wsl, res = judge(wsl_box(tmp_path, version=1))
    assert wsl.version == 1 and res["version"].status == Status.FAIL and "WSL1" in res["version"].message


def test_wsl2_without_wslconfig_uses_defaults(tmp_path):
    wsl, res = judge(wsl_box(tmp_path, vm_ram=31, host_ram=64))
    assert wsl.profile == "/mnt/c/Users/alice" and wsl.host_ram == 64 * GiB and wsl.host_cpus == 16
    assert res["config"].status == Status.OK and res["config"].message.startswith("no /mnt/c/Users/alice/.wslconfig")
    assert "memory 32 GiB (WSL default (50% of Windows RAM))" in res["config"].details[0]
    assert res["memory"].status == Status.OK  # 31 GiB VM ≥ 28 GiB for a 4-job flash-attn build


def test_low_memory_fails_with_a_fix_that_keeps_windows_enough(tmp_path):
    wsl, res = judge(wsl_box(tmp_path, vm_ram=8, host_ram=64, wslconfig="[wsl2]\nmemory=8GB\n"))
    r = res["memory"]
    assert r.status == Status.FAIL and r.message == "the VM has 8 GiB; the planned work needs ~28 GiB"
    assert r.remedy.fix_id == "wsl.memory"
    assert r.remedy.params["values"] == {"memory": "48GB", "swap": "16GB", "processors": "12"}
    fresh = wsl_box(tmp_path / "x")  # no .wslconfig yet: the fix creates one
    plan = FIXES["wsl.memory"].planner([r.remedy.params], PY, None, fresh)
    assert plan.edits[0].old is None
    write_edits(fresh, plan, "t", lambda m: None)
    assert fresh.path("/mnt/c/Users/alice/.wslconfig").read_text() == "[wsl2]\nmemory=48GB\nswap=16GB\nprocessors=12\n"
    assert not list(fresh.path("/mnt/c/Users/alice").glob("*.bak"))


def test_malformed_wslconfig_is_called_out(tmp_path):
    wsl, res = judge(wsl_box(tmp_path, wslconfig="[wsl2]\nmemory = lots\nprocessors=twelve\njust words\n"))
    r = res["config"]
    assert r.status == Status.FAIL and "WSL skips or rejects 3 line(s)" in r.message
    assert r.details[:3] == ["line 2: memory=lots is not a size like 48GB (digits, then B, K, KB, M, MB, G, GB, T or TB)",
                             "line 3: processors=twelve is not a whole number",
                             "line 4: 'just words' is skipped by WSL: a key has only letters and digits, then '='"]


def test_shadowed_nvidia_smi_and_linux_driver_inside_wsl(tmp_path):
    s = wsl_box(tmp_path)
    s.write("/usr/bin/nvidia-smi", "#!/bin/sh\n")
    s.path("/usr/bin/nvidia-smi").chmod(0o755)
    s.write("/var/lib/dpkg/status", "Package: nvidia-driver-550\nStatus: install ok installed\n\n"
                                    "Package: nvidia-utils-550\nStatus: install ok installed\n\n"
                                    "Package: bash\nStatus: install ok installed\n")
    s.write("/usr/lib/x86_64-linux-gnu/libcuda.so.1", "")
    _, res = judge(s)
    assert res["nvidia_smi"].status == Status.WARN and "/usr/bin/nvidia-smi shadows" in res["nvidia_smi"].message
    assert res["driver"].status == Status.FAIL
    assert res["driver"].remedy.command == "sudo apt-get purge nvidia-driver-550 nvidia-utils-550"
    assert res["libcuda"].status == Status.FAIL and "/usr/lib/x86_64-linux-gnu/libcuda.so.1" in res["libcuda"].message


def test_missing_wsl_libcuda(tmp_path):
    s = wsl_box(tmp_path)
    s.path("/usr/lib/wsl/lib/libcuda.so.1").unlink()
    assert judge(s)[1]["libcuda"].status == Status.FAIL


def test_profile_without_interop_falls_back_to_mnt_c_users(tmp_path):
    wsl, res = judge(wsl_box(tmp_path, interop=False))
    assert wsl.profile == "/mnt/c/Users/alice" and wsl.host_ram is None
    assert "interop is off" in wsl.host_from and windows_to_linux("C:\\Users\\Bob", "/mnt/") == "/mnt/c/Users/Bob"


def test_fix_rewrites_wslconfig_with_backup_and_diff(tmp_path):
    original = "\ufeff# my settings\r\n[wsl2]\r\nMemory=8GB\r\nkernel=C:\\\\k\r\n[experimental]\r\nsparseVhd=true\r\n"
    s = wsl_box(tmp_path, vm_ram=8, wslconfig=original.encode("utf-8"))
    wsl, res = judge(s)
    plan = FIXES["wsl.memory"].planner([res["memory"].remedy.params], PY, None, s)
    assert "-Memory=8GB" in plan.edits[0].diff and "+Memory=48GB" in plan.edits[0].diff
    write_edits(s, plan, "20261129-120000", lambda m: None)
    path = s.path("/mnt/c/Users/alice/.wslconfig")
    assert s.path("/mnt/c/Users/alice/.wslconfig.envdoctor-20261129-120000.bak").read_bytes() == original.encode()
    new = path.read_bytes().decode("utf-8")
    assert new == ("\ufeff# my settings\r\n[wsl2]\r\nMemory=48GB\r\nkernel=C:\\\\k\r\nswap=16GB\r\nprocessors=12\r\n"
                   "[experimental]\r\nsparseVhd=true\r\n")
    assert "wsl --shutdown" in plan.afterwards[0]


def test_utf16_wslconfig_stays_utf16(tmp_path):
    s = wsl_box(tmp_path, vm_ram=8, wslconfig="[wsl2]\r\nmemory=8GB\r\n".encode("utf-16"))
    wsl, res = judge(s)
    plan = FIXES["wsl.memory"].planner([res["memory"].remedy.params], PY, None, s)
    write_edits(s, plan, "t", lambda m: None)
    assert s.path("/mnt/c/Users/alice/.wslconfig").read_bytes().decode("utf-16").startswith("[wsl2]\r\nmemory=48GB")


def test_recommendation_matches_the_seed():
    assert recommend(64 * GiB, 16) == {"memory": "48GB", "swap": "16GB", "processors": "12"}
    assert recommend(16 * GiB, 8)["memory"] == "8GB"  # Windows keeps 8 GiB
    assert effective(parse("[wsl2]\nmemory=48GB\nswap=0\n"), 64 * GiB, 16).swap == 0
