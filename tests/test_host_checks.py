"""Host probes and checks against fake machines (directory trees), in ok and not-ok states."""

from envdoctor.checks import host as H
from envdoctor.context import Context
from envdoctor.facts.host import probe_host
from envdoctor.model import Status
from fakes import GiB, linux_box

CTX = Context(python="/venv/bin/python", python_reason="test")


def facts(tmp_path, **kw):
    return probe_host(linux_box(tmp_path, **kw), CTX)


def test_probe_reads_distro_kernel_memory(tmp_path):
    f = facts(tmp_path, ram=64, avail=60, swap=8)
    assert f.distro == "Ubuntu 24.04.1 LTS" and f.kernel == "6.8.0-45-generic"
    assert f.mem_total == 64 * GiB and f.mem_available == 60 * GiB and f.swap_total == 8 * GiB
    assert f.wsl is None


def test_os_ok_on_linux_and_fails_on_macos(tmp_path):
    assert H.os_check(facts(tmp_path)).status == Status.OK
    mac = linux_box(tmp_path / "mac", uname=("Darwin", "23.1.0", "arm64"))
    r = H.os_check(probe_host(mac, CTX))
    assert r.status == Status.FAIL and "no CUDA" in r.message
    wsl1 = linux_box(tmp_path / "wsl1")
    wsl1.write("/proc/sys/kernel/osrelease", "4.4.0-19041-Microsoft\n")
    r = H.os_check(probe_host(wsl1, CTX))
    assert r.status == Status.OK and "(WSL1)" in r.message  # wsl.version is where WSL1 fails


def test_wsl2_is_recognised(tmp_path):
    s = linux_box(tmp_path)
    s.write("/proc/sys/kernel/osrelease", "5.15.167.4-microsoft-standard-WSL2\n")
    f = probe_host(s, CTX)
    assert f.wsl == 2 and "(WSL2)" in H.os_check(f).message


def test_memory_states(tmp_path):
    assert H.memory(facts(tmp_path / "a", ram=64, avail=60)).status == Status.OK
    r = H.memory(facts(tmp_path / "b", ram=16, avail=15))
    assert r.status == Status.WARN and "16.0 GiB" in r.message
    assert H.memory(facts(tmp_path / "c", ram=6, avail=5)).status == Status.FAIL
    busy = H.memory(facts(tmp_path / "d", ram=64, avail=2))
    assert busy.status == Status.WARN and "in use" in busy.message


def test_cgroup_memory_limit_counts(tmp_path):
    s = linux_box(tmp_path, ram=256, avail=250)
    s.write("/sys/fs/cgroup/memory.max", str(12 * GiB))
    r = H.memory(probe_host(s, CTX))
    assert r.status == Status.WARN and "container limit" in r.message


def test_wsl_memory_remedy_names_the_fix(tmp_path):
    s = linux_box(tmp_path, ram=7.6, avail=7)
    s.write("/proc/sys/kernel/osrelease", "5.15.167.4-microsoft-standard-WSL2\n")
    r = H.memory(probe_host(s, CTX))
    assert r.status == Status.FAIL and r.remedy.fix_id == "wsl.memory" and ".wslconfig" in r.remedy.text


def test_swap(tmp_path):
    assert H.swap(facts(tmp_path / "a", swap=8)).status == Status.OK
    r = H.swap(facts(tmp_path / "b", swap=0))
    assert r.status == Status.WARN and "swapon" in r.remedy.command


def test_cpu_counts_affinity_and_quota(tmp_path):
    assert H.cpu(facts(tmp_path / "a", cpus=16)).status == Status.OK
    s = linux_box(tmp_path / "b", cpus=64)
    s.write("/sys/fs/cgroup/cpu.max", "200000 100000\n")
    f = probe_host(s, CTX)
    assert f.cpus_usable == 2 and f.cpu_quota == 2.0
    r = H.cpu(f)
    assert r.status == Status.WARN and "2 usable CPUs of 64" in r.message
    pinned = probe_host(linux_box(tmp_path / "c", cpus=32, affinity=3), CTX)
    assert pinned.cpus_usable == 3


def test_disk_states_and_hf_cache_location(tmp_path):
    assert H.disk(facts(tmp_path / "a", free_gib=500)).status == Status.OK
    r = H.disk(facts(tmp_path / "b", free_gib=50))
    assert r.status == Status.WARN
    r = H.disk(facts(tmp_path / "c", free_gib=10))
    assert r.status == Status.FAIL and "HF_HOME" in r.remedy.text
    s = linux_box(tmp_path / "d", env={"HOME": "/home/u", "HF_HOME": "/data/hf"})
    s.disks = {"/": (100 * GiB, 30 * GiB, 1), "/data": (4000 * GiB, 3000 * GiB, 2)}
    s.mkdir("/data")
    f = probe_host(s, CTX)
    hf = [d for d in f.disks if d.role == "Hugging Face cache"][0]
    assert hf.path == "/data/hf/hub" and hf.measured_at == "/data" and hf.free == 3000 * GiB
    r = H.disk(f)  # the working dir disk alone: 30 GiB is enough to run, not comfortable
    assert r.status == Status.WARN and len(r.items) == 2


def test_glibc(tmp_path):
    from envbuild import pyenv
    assert H.glibc(pyenv(glibc="glibc 2.39")).status == Status.OK
    assert H.glibc(pyenv(glibc="glibc 2.27")).status == Status.WARN
    assert H.glibc(pyenv(glibc="glibc 2.12")).status == Status.FAIL
    assert H.glibc(pyenv(glibc=None)).status == Status.SKIP
