"""An extension built here that no longer fits the installed torch, for real: a tiny setuptools package whose
C extension links the real torch 2.13.0's libc10.so and needs a c10 symbol torch does not export (what an
extension built against another torch looks like to the loader). It is installed from a local folder with
pip, as `pip install ./src` or a cpp_extension build leaves it; no index has it.

- installed from its folder: the printed remedy rebuilds from that folder (pip recorded it in
  direct_url.json); applied after the source is fixed (as a user would after updating it), the re-check
  is clean and the extension imports and runs;
- installed from a wheel by name (no direct_url.json): no automatic fix, said in the text; no command, no
  fix id, and never a reinstall of the same build."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_remedy_cpu_torch import pip, restored_after, results, run_py

pytestmark = pytest.mark.slow

GONE = "envdoctor_removed_in_2_13"
MANGLED = f"_ZN3c10{len(GONE)}{GONE}Ev"  # c10::envdoctor_removed_in_2_13()
SETUP = '''import importlib.util, os
from setuptools import Extension, setup
lib = os.path.join(importlib.util.find_spec("torch").submodule_search_locations[0], "lib")
# libc10 after --no-as-needed, so the link is kept even where no symbol of it resolves at link time.
setup(name="tinyext", version="0.1", packages=["tinyext"],
      ext_modules=[Extension("tinyext._C", ["tinyext/_C.c"],
                             extra_link_args=["-Wl,--no-as-needed", "-L" + lib, "-lc10", "-Wl,-rpath," + lib])])
'''
SOURCE = '''#include <Python.h>
DECL
static PyObject* answer(PyObject* self, PyObject* args) { CALL return PyLong_FromLong(42); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, ""}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_C", NULL, -1, methods};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&mod); }
'''
USE = "import torch, tinyext._C as c; print(c.answer())"


def write_source(src: Path, broken: bool) -> None:
    decl, call = (f"extern void {MANGLED}(void);", f"{MANGLED}();") if broken else ("", "")
    (src / "tinyext" / "_C.c").write_text(SOURCE.replace("DECL", decl).replace("CALL", call))


def package(root: Path) -> Path:
    src = root / "tiny ext"  # a space: the printed command must quote the folder
    (src / "tinyext").mkdir(parents=True)
    (src / "setup.py").write_text(SETUP)
    (src / "tinyext" / "__init__.py").write_text("")
    write_source(src, broken=True)
    return src


def finding(home: Path, py: Path) -> dict:
    res = results(home, py, "binaries.extensions")["binaries.extensions"]
    assert res["status"] == "fail", res
    [item] = [i for i in res["items"] if "tinyext" in i["message"]]
    assert f"needs c10::{GONE}(), which torch 2.13.0" in item["message"], item
    return item


def test_extension_built_from_a_folder_is_rebuilt_from_that_folder(cpu_torch_venv, tmp_path):
    py = cpu_torch_venv
    src = package(tmp_path)
    with restored_after(py):
        pip(py, "--no-build-isolation", str(src))
        # The loader agrees with the prediction.
        real = subprocess.run([str(py), "-c", USE], capture_output=True, text=True)
        assert real.returncode != 0 and f"undefined symbol: {MANGLED}" in real.stderr
        remedy = finding(tmp_path, py)["remedy"]
        assert remedy["fix_id"] is None and "==0.1" not in remedy["command"]
        assert remedy["command"].endswith(f"--force-reinstall --no-deps --no-build-isolation '{src}'")
        write_source(src, broken=False)  # the user updates the source to this torch
        subprocess.run(remedy["command"], shell=True, check=True, timeout=900, capture_output=True)
        assert results(tmp_path, py, "binaries.extensions")["binaries.extensions"]["status"] == "ok"
        assert run_py(py, USE) == "42"
        assert run_py(py, "import torch; print(torch.__version__)") == "2.13.0+cpu"


def test_extension_without_a_recorded_source_says_no_automatic_fix(cpu_torch_venv, tmp_path):
    py = cpu_torch_venv
    src = package(tmp_path)
    wheels = tmp_path / "wheels"
    subprocess.run([str(py), "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(src)], check=True, timeout=900)
    with restored_after(py):
        pip(py, "--no-index", "--find-links", str(wheels), "tinyext==0.1")  # by name: no direct_url.json
        item = finding(tmp_path, py)
        remedy = item["remedy"]
        assert remedy["command"] is None and remedy["fix_id"] is None
        assert "tinyext 0.1 must be rebuilt from its source against torch 2.13.0+cpu" in remedy["text"]
        assert "no direct_url.json" in remedy["text"] and "no automatic fix exists" in remedy["text"]
