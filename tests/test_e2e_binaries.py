"""End to end: a real venv with the real CPU torch and PyPI's torchvision, which is a CUDA build and so
binary-incompatible with it. envdoctor predicts the failure from the ELF files, and the prediction
equals what importing it really does."""

import json
import subprocess
import sys
import venv

import pytest

pytestmark = pytest.mark.slow
# torchvision 0.28 is built for torch 2.13. The CPU torch by its local label, from PyTorch's CPU index or a
# CPU wheel pip finds locally (find-links): PyPI's Linux torch is a CUDA build (5 GB with its nvidia-*
# wheels) that this torchvision would load into. torchvision from PyPI alone: there it is the CUDA build.
TORCH, TORCHVISION = "torch==2.13.0+cpu", "torchvision==0.28.0"
CPU_INDEX = ["--extra-index-url", "https://download.pytorch.org/whl/cpu", "--retries", "1"]


@pytest.fixture(scope="module")
def torch_venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("tv")
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    py = root / "venv" / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + [TORCH, *CPU_INDEX], check=True)
    subprocess.run(pip + ["--no-deps", TORCHVISION], check=True)
    return py


def test_prediction_names_the_cause_and_equals_the_real_import(torch_venv):
    proc = subprocess.run([sys.executable, "-m", "envdoctor", "check", "--json", "--deep", "--python",
                           str(torch_venv), "--only", "binaries", "deep.imports"],
                          capture_output=True, text=True, timeout=600)
    data = json.loads(proc.stdout)
    res = {r["id"]: r for r in data["results"]}
    ext = res["binaries.extensions"]
    assert proc.returncode == 1 and ext["status"] == "fail"
    by_file = {i["message"].split(" will fail")[0]: i for i in ext["items"]}
    assert set(by_file) == {"loading torchvision/_C.so", "loading torchvision/image.so"}
    c = by_file["loading torchvision/_C.so"]
    assert c["message"] == ("loading torchvision/_C.so will fail: libc10_cuda.so, libtorch_cuda.so not found "
                            "(torchvision 0.28.0 is a CUDA build; torch 2.13.0+cpu is CPU-only)") or \
        "libcudart.so.13, " in c["message"]  # where no CUDA 13 runtime is installed system-wide
    assert c["remedy"]["command"].endswith("-m pip install --force-reinstall --no-deps 'torchvision==0.28.*' "
                                           "--index-url https://download.pytorch.org/whl/cpu")
    # The real imports, after `import torch`, in a subprocess: every prediction held.
    deep = res["deep.imports"]
    assert deep["status"] == "ok", deep
    assert all(i["message"].endswith("fails, as predicted") for i in deep["items"])
    lib = torch_venv.parent.parent / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / \
        "site-packages" / "torchvision" / "_C.so"
    load = f"import torch, ctypes, os; ctypes.CDLL({str(lib)!r}, mode=os.RTLD_NOW)"
    real = subprocess.run([str(torch_venv), "-c", load], capture_output=True, text=True)
    assert real.returncode != 0 and "libc10_cuda.so: cannot open shared object file" in real.stderr
    # What the user sees: torchvision swallows the load error and fails on its first operator.
    user = subprocess.run([str(torch_venv), "-c", "import torchvision"], capture_output=True, text=True)
    assert user.returncode != 0 and "operator torchvision::nms does not exist" in user.stderr
