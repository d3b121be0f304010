"""Package checks over probe-shaped facts: requirements with markers and extras, duplicates,
metadata, companions, pip."""

from envbuild import dist, pyenv

from envdoctor.checks import packages as K
from envdoctor.model import Status

TORCH = dist("torch", "2.8.0+cu128", ["filelock", "sympy>=1.13.3"])
BASE = [dist("filelock", "3.16.1"), dist("sympy", "1.14.0"), dist("pip", "25.2")]


def test_all_met():
    r = K.requirements(pyenv(TORCH, *BASE))
    assert r.status == Status.OK and "every requirement met" in r.message


def test_missing_requirement_names_package_requirement_and_command():
    axo = dist("axolotl", "0.13.0", ["torchao==0.13.0", "torch>=2.6"])
    r = K.requirements(pyenv(TORCH, *BASE, axo))
    assert r.status == Status.FAIL and "1 missing" in r.message
    (item,) = r.items
    assert item.message == "axolotl 0.13.0 requires torchao==0.13.0, but it is not installed"
    assert r.remedy.command == ("/venv/bin/python -m pip install 'torchao==0.13.0' 'torch==2.8.0+cu128'")


def test_version_conflict_shows_installed_and_combined_spec():
    peft = dist("peft", "0.17.0", ["transformers>=4.56", "accelerate>=0.21.0"])
    trl = dist("trl", "0.20.0", ["transformers<4.58"])
    env = pyenv(TORCH, *BASE, peft, trl, dist("transformers", "4.55.0"), dist("accelerate", "1.10.0"))
    r = K.requirements(env)
    assert r.status == Status.FAIL and "1 version conflicts" in r.message
    assert r.items[0].message == "peft 0.17.0 requires transformers>=4.56, but 4.55.0 is installed"
    # The fix satisfies every installed requirer, not only the one that complains.
    assert "'transformers<4.58,>=4.56'" in r.remedy.command


def test_contradictory_pins_are_called_out():
    a = dist("a", "1.0", ["transformers==4.55.0"])
    b = dist("b", "1.0", ["transformers>=4.57"])
    r = K.requirements(pyenv(a, b, dist("transformers", "4.55.0")))
    assert r.status == Status.FAIL
    assert "no version satisfies both a 1.0 (==4.55.0) and b 1.0 (>=4.57)" in r.items[0].details[0]
    assert r.remedy is None or "transformers" not in (r.remedy.command or "")


def test_markers_are_evaluated_for_the_target():
    pkg = dist("pkg", "1.0", ['pywin32>=300; sys_platform == "win32"', 'tomli; python_version < "3.11"',
                              'exceptiongroup; python_version < "3.12"'])
    r = K.requirements(pyenv(pkg, version=(3, 11, 7)))
    assert [i.message for i in r.items] == ["pkg 1.0 requires exceptiongroup; python_version < \"3.12\", "
                                            "but it is not installed"]


def test_extras_are_followed_transitively():
    # app needs lib[cuda]; lib's cuda extra needs kernels>=2 (installed: 1.0) and kernels[fast] needs speedy.
    app = dist("app", "1.0", ["lib[cuda]>=1"])
    lib = dist("lib", "1.2", ['kernels>=2; extra == "cuda"', 'unused; extra == "docs"'], extras=["cuda", "docs"])
    kern = dist("kernels", "1.0", ['speedy; extra == "fast"'])
    r = K.requirements(pyenv(app, lib, kern))
    msgs = [i.message for i in r.items]
    assert msgs == ['lib 1.2 requires kernels>=2; extra == "cuda" (through its extra [cuda]), but 1.0 is installed']


def test_unparseable_requirement_is_a_warning():
    r = K.requirements(pyenv(dist("odd", "1.0", ["this is not a requirement !!"])))
    assert r.status == Status.WARN and "cannot parse" in r.items[0].message


def test_torch_requirement_unpins_torch_and_uses_its_index():
    tv = dist("torchvision", "0.24.0+cu128", ["torch==2.9.0"])
    r = K.requirements(pyenv(TORCH, *BASE, tv))
    assert "'torch==2.9.0'" in r.remedy.command and "torch==2.8.0" not in r.remedy.command
    assert "--extra-index-url https://download.pytorch.org/whl/cu128" in r.remedy.command


def test_duplicates():
    assert K.duplicates(pyenv(TORCH, *BASE)).status == Status.OK
    stale = dist("torch", "2.7.0+cu126")
    r = K.duplicates(pyenv(TORCH, stale))
    assert r.status == Status.FAIL and r.items[0].message == "torch is installed 2 times"
    assert "interrupted upgrade" in r.items[0].details[-1]
    user = dist("numpy", "1.26.4", site="/home/u/.local/lib/python3.11/site-packages")
    r = K.duplicates(pyenv(dist("numpy", "1.26.4"), user))
    assert r.status == Status.WARN


def test_metadata():
    assert K.metadata(pyenv(*BASE)).status == Status.OK
    broken = dist("brokenpkg", None, problems=["METADATA has no Version"])
    r = K.metadata(pyenv(broken, dist("weird", "not-a-version")))
    assert r.status == Status.FAIL and len(r.items) == 2
    r = K.metadata(pyenv(*BASE, strays=["/venv/lib/python3.11/site-packages/~orch"]))
    assert r.status == Status.WARN and "rm -rf" in r.items[0].remedy.command


def test_companions_match():
    env = pyenv(TORCH, dist("torchvision", "0.23.0+cu128"), dist("torchaudio", "2.8.0+cu128"),
                dist("torchao", "0.13.0"))
    r = K.companions(env)
    assert r.status == Status.OK and "torchvision 0.23.0+cu128 matches" in r.message


def test_companion_for_other_torch_and_other_cuda():
    r = K.companions(pyenv(TORCH, dist("torchvision", "0.22.0+cu128")))
    assert r.status == Status.FAIL and "needs torchvision 0.23.x" in r.items[0].message
    assert r.items[0].remedy.command == ("/venv/bin/python -m pip install --force-reinstall --no-deps "
                                         "'torchvision==0.23.*' --index-url https://download.pytorch.org/whl/cu128")
    r = K.companions(pyenv(TORCH, dist("torchaudio", "2.8.0+cu126")))
    assert r.status == Status.FAIL and "cu126 build but torch is cu128" in r.items[0].message


def test_torchao_table():
    r = K.companions(pyenv(TORCH, dist("torchao", "0.16.0")))
    assert r.status == Status.WARN and "built for torch 2.10.0, not 2.8.0+cu128" in r.items[0].message
    assert "'torchao==0.14.0'" in r.items[0].remedy.command
    new = dist("torch", "2.12.0+cu130")
    assert K.companions(pyenv(new, dist("torchao", "0.18.0"))).status == Status.OK
    r = K.companions(pyenv(new, dist("torchaudio", "2.11.0")))
    assert r.status == Status.FAIL and "no release" in r.items[0].message


def test_pip_check():
    assert K.pip(pyenv(*BASE)).status == Status.OK
    r = K.pip(pyenv(TORCH))
    assert r.status == Status.WARN and "ensurepip" in r.remedy.command


def test_extra_markers_that_apply_without_the_extra_are_not_skipped():
    pkg = dist("pkg", "1.0", ['always; extra == "x" or python_version >= "3"', 'never; extra == "x"',
                              'notx; extra != "x"'])
    msgs = sorted(i.message.split(",")[0] for i in K.requirements(pyenv(pkg)).items)
    assert msgs == ['pkg 1.0 requires always; extra == "x" or python_version >= "3"',
                    'pkg 1.0 requires notx; extra != "x"']
