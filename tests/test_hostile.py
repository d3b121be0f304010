"""Hostile input and faults (issue #15): every reader rejects what it cannot read with an error naming the
file and where, a closed pipe ends quietly, a GPU whose tools crash is a failure, subprocesses die whole."""

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gpufake import gpu_box, smi_csv

from envdoctor import fleet
from envdoctor.checks import gpu as G
from envdoctor.checks.model_dir import files as model_files
from envdoctor.context import Context
from envdoctor.errors import UsageError
from envdoctor.facts.gpu import parse_smi_csv, probe_gpu
from envdoctor.facts.gpu_presence import gpu_presence
from envdoctor.facts.model_dir import probe_model_dir
from envdoctor.facts.toolkit import parse_nvcc_version, parse_version_json
from envdoctor.model import Status
from envdoctor.recipes import validate
from envdoctor.system import CommandResult, System

CTX = Context(python="/venv/bin/python", python_reason="test")
ENV = {**os.environ, "NO_COLOR": "1"}
ENV.pop("VIRTUAL_ENV", None)
BINARY = b"\x7fELF\x02\x01\x01\x00" + bytes(range(256))
ROW = "0, NVIDIA GeForce RTX 4090, GPU-abc, 8.9, 24564, 23000, 1564, [N/A], 560.35.03"


def envdoctor(*args, cwd, **kw):
    return subprocess.run([sys.executable, "-m", "envdoctor", *args], capture_output=True, text=True, cwd=cwd,
                          env=ENV, timeout=300, **kw)


# -- recipes -------------------------------------------------------------------------------------

def test_binary_recipe_is_an_error_naming_the_byte(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"name: bad\ndescription: \xff\xfe\n")
    recipe, errors = validate(path)
    assert recipe is None and errors == [f"{path}: not UTF-8 text (line 2, column 14, byte 23: b'\\xff'); "
                                         "expected a YAML recipe"]
    # validate's findings are the file's errors (exit 1); for check the recipe is input that is unusable (2)
    for code, args in ((1, ("recipes", "validate", str(path))), (2, ("check", "--recipe", str(path)))):
        res = envdoctor(*args, cwd=tmp_path)
        assert res.returncode == code and "Traceback" not in res.stderr and "not UTF-8 text" in res.stderr, args


def test_recipe_keys_of_other_types_are_listed_not_sorted_into_a_crash(tmp_path):
    path = tmp_path / "odd.yaml"
    path.write_text("1: a\nname: odd\ntorch: {version: 2.8.0, index: cpu, 2: x}\n")
    _, errors = validate(path)
    assert f"{path}: 1: unknown key" in errors[0] and any("torch.2: unknown key" in e for e in errors)


# -- report merge --------------------------------------------------------------------------------

GOOD = {"envdoctor_version": "0.1", "facts": {}, "results": []}


@pytest.mark.parametrize("content, message", [
    (BINARY, "not UTF-8 text (line 2, column 118, byte 136: b'\\x80')"),
    (json.dumps({**GOOD, "results": "all fine"}).encode(), "results: expected a list of check results (objects), "
                                                           "got str"),
    (json.dumps({**GOOD, "results": [1, 2]}).encode(), "results: expected a list of check results (objects), "
                                                       "got a list holding int"),
    (json.dumps({**GOOD, "facts": ["gpu"]}).encode(), "facts: expected an object, got a list"),
])
def test_report_merge_rejects_what_is_not_a_report(tmp_path, content, message):
    bad, good = tmp_path / "bad.json", tmp_path / "good.json"
    bad.write_bytes(content)
    good.write_text(json.dumps(GOOD))
    with pytest.raises(UsageError) as exc:
        fleet.load([str(bad), str(good)])
    assert str(exc.value).startswith(str(bad)) and message in str(exc.value)
    res = envdoctor("report", "merge", str(bad), str(good), cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr and message in res.stderr


def test_report_merge_reads_deeper_values_of_other_types_as_missing(tmp_path):
    odd = {**GOOD, "facts": {"gpu": [1], "torch": {"installed": True, "version": {"v": 1}},
                             "python": {"distributions": [3, {"name": ["x"]}, {"name": "peft", "version": "1"}]}},
           "results": [{"status": "fail", "message": {"m": 1}}]}
    (tmp_path / "a.json").write_text(json.dumps(odd))
    (tmp_path / "b.json").write_text(json.dumps(GOOD))
    nodes = fleet.load([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert nodes[0].values["pkg peft"] == "1" and nodes[0].values["check None"] == "fail: "


# -- model folders -------------------------------------------------------------------------------

def safetensors(header) -> bytes:
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + b"\0" * 16


@pytest.mark.parametrize("header, message", [
    ({"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": "0-8"}},
     "tensor 'w': data_offsets: expected [begin, end] with 0 <= begin <= end, got '0-8'"),
    ({"w": {"dtype": 16, "shape": [2, 2], "data_offsets": [0, 8]}}, "tensor 'w': dtype: expected a string"),
    ({"w": {"dtype": "BF16", "shape": "2x2", "data_offsets": [0, 8]}}, "tensor 'w': shape: expected a list"),
    ({"w": [0, 8]}, "tensor 'w': expected an object with dtype, shape, data_offsets, got list"),
    ([1, 2], "header: expected a JSON object of tensors, got list"),
])
def test_safetensors_header_of_wrong_types_is_a_finding(tmp_path, header, message):
    (tmp_path / "config.json").write_text("not json")
    (tmp_path / "model.safetensors").write_bytes(safetensors(header))
    facts = probe_model_dir(System(), Context("/x", "t", model_dir=str(tmp_path)))
    r = model_files(facts)
    assert r.status == Status.FAIL and f"model.safetensors: {message}" in "\n".join(r.details), r.details


def test_index_whose_weight_map_is_a_list_or_points_outside(tmp_path):
    (tmp_path / "config.json").write_text("[]")
    index = tmp_path / "model.safetensors.index.json"
    for weight_map, message in (([["w", "a.safetensors"]], "got list"),
                                ({"w": "../../secret.safetensors"}, "a shard name '../../secret.safetensors'")):
        index.write_text(json.dumps({"weight_map": weight_map}))
        facts = probe_model_dir(System(), Context("/x", "t", model_dir=str(tmp_path)))
        r = model_files(facts)
        assert r.status == Status.FAIL and "config.json: expected a JSON object, got list" in r.details
        assert any(d.startswith("model.safetensors.index.json: weight_map: expected an object") and message in d
                   for d in r.details), r.details


# -- tool output ---------------------------------------------------------------------------------

def test_nvidia_smi_rows_that_cannot_be_read_are_rejected_not_guessed():
    driver, gpus, bad = parse_smi_csv("0, NVIDIA H200, GPU-1, 8., 100, 90, 10, [N/A], 560.35.03\n")
    assert gpus == [] and "compute_cap: expected MAJOR.MINOR like 8.9, got '8.'" in bad[0]
    driver, gpus, bad = parse_smi_csv("0, NVIDIA H200, GPU-1, 9.0, 100, 90, 10, [N/A], 5")
    assert gpus == [] and "driver_version: expected a version like 560.35.03, got '5'" in bad[0]
    driver, gpus, bad = parse_smi_csv(ROW + "\n1, NVIDIA GeForce RTX 4090, GPU-b, 8.9, 245\n")
    assert driver == "560.35.03" and len(gpus) == 1 and bad[0].startswith("line 2: expected 9 comma-separated")


def test_nvcc_versions_that_are_not_versions_are_none():
    assert parse_version_json('{"cuda_nvcc": {"version": "12.8.93"}}') == "12.8.93"
    for text in ('{"cuda_nvcc": "12.8"}', "[1]", '{"cuda": {"version": 12.8}}', '{"cuda": {"version": "12."}}',
                 "{"):
        assert parse_version_json(text) is None, text
    assert parse_nvcc_version("Cuda compilation tools, release 12.8, V12.8.93") == "12.8"
    assert parse_nvcc_version("release 12.") is None


def smi_machine(tmp_path, answer, *signals):
    system, py = gpu_box(tmp_path, None, commands={"/usr/bin/nvidia-smi": answer})
    system.write("/usr/bin/nvidia-smi", "#!/bin/sh\n")
    system.path("/usr/bin/nvidia-smi").chmod(0o755)
    for s in signals:
        s(system)
    return system


def nvidia_module(system):
    system.mkdir("/proc/driver/nvidia/gpus/0000:01:00.0")


def pci_gpu(driver):
    def add(system):
        dev = "/sys/bus/pci/devices/0000:01:00.0"
        system.write(f"{dev}/vendor", "0x10de\n").write(f"{dev}/class", "0x030000\n")
        system.mkdir(f"/sys/bus/drivers/{driver}")
        system.path(f"{dev}/driver").symlink_to(system.path(f"/sys/bus/drivers/{driver}"))
    return add


SEGV = CommandResult(("nvidia-smi",), -11, "", "", 0.1)


def test_a_crashing_nvidia_smi_on_a_machine_with_a_gpu_fails(tmp_path):
    system = smi_machine(tmp_path, SEGV, nvidia_module)
    gpu = probe_gpu(system, CTX)
    r = G.driver(gpu)
    assert r.status == Status.FAIL
    assert r.message == ("the platform shows an NVIDIA GPU but its tools do not: /usr/bin/nvidia-smi: killed by "
                         "signal 11 (SIGSEGV)")
    assert r.details[0].startswith("shows a GPU: /proc/driver/nvidia: the nvidia kernel module is loaded (1 GPU")
    assert "reinstall" in r.remedy.text and "dmesg" in r.remedy.command
    assert G.devices(gpu).message == "the GPU's tools failed (see gpu.driver)"


def test_a_crashing_nvidia_smi_without_any_gpu_signal_is_still_no_gpu(tmp_path):
    r = G.driver(probe_gpu(smi_machine(tmp_path, SEGV), CTX))
    assert r.status == Status.SKIP and r.message == G.NO_GPU
    assert "killed by signal 11 (SIGSEGV)" in r.details[-1]


def test_garbage_from_nvidia_smi_with_a_bound_pci_gpu_fails_naming_the_line(tmp_path):
    system = smi_machine(tmp_path, smi_csv("Segmentation fault", "NVIDIA-SMI has failed"), pci_gpu("nvidia"))
    r = G.driver(probe_gpu(system, CTX))
    assert r.status == Status.FAIL and "2 unreadable line(s) from nvidia-smi" in r.message
    assert "shows a GPU: PCI: 0000:01:00.0 (vendor 0x10de, display controller, driver nvidia)" in r.details
    assert any("line 1: expected 9 comma-separated fields" in d and "Segmentation fault" in d for d in r.details)


def test_a_second_gpu_row_cut_short_fails_instead_of_vanishing(tmp_path):
    system = smi_machine(tmp_path, smi_csv(ROW, "1, NVIDIA GeForce RTX 4090, GPU-b, 8.9, 245"))
    gpu = probe_gpu(system, CTX)
    r = G.driver(gpu)
    assert len(gpu.gpus) == 1 and r.status == Status.FAIL
    assert r.message == "nvidia-smi printed 1 line(s) that are not a GPU row: GPUs may be missing from this report"
    assert "read: GPU 0 NVIDIA GeForce RTX 4090" in r.details


def test_a_gpu_passed_to_a_vm_is_not_present(tmp_path):
    system = smi_machine(tmp_path, SEGV, pci_gpu("vfio-pci"))
    assert gpu_presence(system) == []
    r = G.driver(probe_gpu(system, CTX))
    assert r.status == Status.SKIP
    assert "PCI 0000:01:00.0: NVIDIA GPU bound to vfio-pci (passed through to a VM: not usable here)" in r.details


def test_wsl2_signal_is_dxg_with_the_windows_driver(tmp_path):
    system, _ = gpu_box(tmp_path, None)
    system.write("/dev/dxg", "")
    assert gpu_presence(system) == []          # /dev/dxg alone: an AMD or Intel GPU gives it too
    system.write("/usr/lib/wsl/lib/libcuda.so.1", "")
    assert gpu_presence(system) == ["WSL2: /dev/dxg and the Windows NVIDIA driver's libcuda in /usr/lib/wsl/lib"]
    r = G.driver(probe_gpu(system, CTX))
    assert r.status == Status.FAIL and "NVML and nvidia-smi list no GPU" in r.message


def test_device_nodes_are_a_signal(tmp_path):
    system, _ = gpu_box(tmp_path, None)
    system.write("/dev/nvidia0", "").write("/dev/nvidiactl", "")
    assert gpu_presence(system) == ["device nodes: /dev/nvidia0"]


# -- processes -----------------------------------------------------------------------------------

def test_a_timed_out_command_is_killed_with_its_children(tmp_path):
    pidfile = tmp_path / "child.pid"
    script = tmp_path / "hang.sh"
    script.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {pidfile}\necho started\nwait\n")
    script.chmod(0o755)
    res = System().run([str(script)], timeout=1.0)
    assert res.timed_out and res.stdout == "started\n"
    child = int(pidfile.read_text())
    for _ in range(100):  # the orphan is reaped by init once killed; poll briefly, no timing asserted
        state = Path(f"/proc/{child}/stat")
        if not state.exists() or state.read_text().split(") ")[-1].startswith("Z"):
            break
        time.sleep(0.05)
    else:
        os.kill(child, 9)
        pytest.fail(f"the child {child} of a timed-out command is still running")


def test_signal_names_in_descriptions():
    assert CommandResult(("nvidia-smi", "-q"), -11, "", "", 0.1).describe() == \
        "nvidia-smi …: killed by signal 11 (SIGSEGV)"


# -- closed pipes --------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [("checks",), ("check", "--json", "--only", "system.os"),
                                  ("check", "--format", "github", "--only", "system.os"),
                                  ("recipes", "list")])
def test_a_closed_pipe_ends_quietly(tmp_path, args):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first byte: every write fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, "-m", "envdoctor", *args], stdout=write, stderr=subprocess.PIPE,
                              text=True, cwd=tmp_path, env=ENV, timeout=300)
    finally:
        os.close(write)
    assert proc.returncode in (0, 141) and proc.stderr == "", proc.stderr


def test_a_closed_pipe_after_report_merge(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(GOOD))
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "envdoctor", "report", "merge", "a.json", "a.json"],
                              stdout=write, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=ENV, timeout=300)
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == ""


def test_an_nvidia_smi_that_cannot_reach_the_loaded_driver_fails(tmp_path):
    broken = CommandResult(("nvidia-smi",), 9, "NVIDIA-SMI has failed because it couldn't communicate with the "
                           "NVIDIA driver.\n", "", 0.1)
    r = G.driver(probe_gpu(smi_machine(tmp_path, broken, nvidia_module), CTX))
    assert r.status == Status.FAIL and r.message == (
        "the platform shows an NVIDIA GPU but its tools do not: /usr/bin/nvidia-smi: exit code 9: NVIDIA-SMI has "
        "failed because it couldn't communicate with the NVIDIA driver.")


def test_report_merge_takes_a_result_whose_status_is_not_text(tmp_path):
    """Found by bench/fuzz.py (report case 102, seed 0): a status that is a mapping is not a failure name."""
    from envdoctor import fleet
    report = {"schema_version": 2, "node": {"hostname": "n1"}, "results": [{"id": "gpu.driver", "status": {"fail": 1}},
                                                              {"id": "gpu.arch", "status": "fail", "message": "m"}]}
    (tmp_path / "a.json").write_text(json.dumps(report))
    (node,) = fleet.load([str(tmp_path / "a.json")])
    assert "check gpu.arch" in node.values and "check gpu.driver" not in node.values
