"""Recipes: the bundled ones validate, bad files report every error at once, the machine picks one,
and `check --recipe` compares an environment with one."""

import textwrap

import pytest
from envbuild import dist, pyenv
from gpufake import H200, RTX4090, RTX5090, gpu_box, nvml

from envdoctor import cli, recipes
from envdoctor.checks.recipe import match
from envdoctor.commands.install import pick, steps_for
from envdoctor.context import Context
from envdoctor.errors import UsageError
from envdoctor.model import Status


def test_every_bundled_recipe_validates_and_says_when_to_use_it():
    found = recipes.bundled()
    assert {"blackwell-cu128", "cuda13", "cpu"} <= set(found)
    for name, path in found.items():
        recipe, errors = recipes.validate(path)
        assert errors == [] and recipe.name == name
        assert "Use when:" in recipe.header and "Install:" in recipe.header
    seed = recipes.load("blackwell-cu128")
    assert seed.torch_spec == "torch==2.8.0" and seed.torch_index == "cu128"
    assert "torchao==0.13.0" in seed.packages and seed.build == ["flash-attn==2.8.3"]


def test_validate_reports_all_errors_with_file_and_key(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text(textwrap.dedent("""\
        name: Other Name
        torch: {version: banana, index: cu999x, extra: 1}
        packages: [peft, "transformers==4.57.1", 3]
        gpu: {archs: [sm_90, ampere], min_driver: new}
        colour: blue
        """))
    recipe, errors = recipes.validate(bad)
    assert recipe is None
    assert errors == [
        f"{bad}: colour: unknown key (known: build, description, gpu, name, packages, python, torch)",
        f"{bad}: name: expected a lower-case name like 'blackwell-cu128', got 'Other Name'",
        f"{bad}: description: expected one line of text, got None",
        f"{bad}: torch.version: expected a PEP 440 version like '2.8.0', got 'banana'",
        f"{bad}: torch.index: expected pypi, cpu, cuXYZ or rocmX.Y, got 'cu999x'",
        f"{bad}: torch.extra: unknown key (known: companions, index, version)",
        f"{bad}: packages[0]: expected a pinned requirement like 'peft==0.17.1', got 'peft'",
        f"{bad}: packages[2]: expected a pinned requirement like 'peft==0.17.1', got 3",
        f"{bad}: gpu.archs[1]: expected an arch like 'sm_90', got 'ampere'",
        f"{bad}: gpu.min_driver: expected a driver version like '570.26', got 'new'",
    ]
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    _, errors = recipes.validate(tmp_path / "broken.yaml")
    assert errors[0].startswith(f"{tmp_path / 'broken.yaml'}: not valid YAML (line 2")


def test_recipes_cli(capsys, tmp_path):
    assert cli.main(["recipes", "list"]) == 0
    assert "blackwell-cu128" in capsys.readouterr().out
    assert cli.main(["recipes", "show", "cuda13"]) == 0
    assert "torch:\n  version: \"2.11.0\"" in capsys.readouterr().out
    bad = tmp_path / "x.yaml"
    bad.write_text("name: x\n")
    assert cli.main(["recipes", "validate", str(bad)]) == 1
    err = capsys.readouterr()
    assert "torch: expected a mapping" in err.err and "error(s)" in err.out
    assert cli.main(["recipes", "show", "nope"]) == 2


@pytest.mark.parametrize("gpus,driver,expected", [
    ([RTX5090], "570.124.06", "blackwell-cu128"), ([H200], "580.95.05", "cuda13"),
    ([RTX4090], "575.51.03", "blackwell-cu128"), (None, None, "cpu")])
def test_install_picks_the_recipe_from_gpu_and_driver(tmp_path, gpus, driver, expected):
    answer = nvml(driver, 13000, *gpus) if gpus else None
    system, _ = gpu_box(tmp_path, answer)
    recipe, why = pick(system, Context("/usr/bin/python3", "t"))
    assert recipe.name == expected


def test_install_order_torch_first_then_pinned_then_builds(tmp_path):
    steps = steps_for(recipes.load("blackwell-cu128"), "/v/bin/python", tmp_path / "c.txt",
                      {"MAX_JOBS": "2", "FLASH_ATTN_CUDA_ARCHS": "120"})
    assert steps[0].argv[-4:] == ["torch==2.8.0", "torchvision==0.23.0", "--index-url",
                                  "https://download.pytorch.org/whl/cu128"]
    assert "--constraint" in steps[1].argv and "axolotl==0.13.1" in steps[1].argv
    last = steps[-1]
    assert "--no-build-isolation" in last.argv and last.argv[-1] == "flash-attn==2.8.3"
    assert last.env == {"MAX_JOBS": "2", "FLASH_ATTN_CUDA_ARCHS": "120"}


def test_check_recipe_compares_pins():
    r = recipes.load("cpu")
    env = pyenv(dist("torch", "2.13.0+cpu"), dist("transformers", "5.24.0"), dist("peft", "0.20.0"),
                dist("accelerate", "1.15.0"))
    res = match(r, env)
    assert res.status == Status.FAIL and res.message == "2 of 5 pins of cpu differ"
    assert sorted(i.message for i in res.items if i.status == Status.FAIL) == [
        "peft==0.21.2: 0.20.0 is installed", "safetensors==0.8.0: not installed"]


def test_install_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(UsageError, match="exists and is not empty"):
        from envdoctor.commands.install import run_install
        from envdoctor.system import System

        class A:
            venv, recipe, base_python, dry_run = str(tmp_path), "cpu", None, False
        run_install(A, System())
    assert (tmp_path / "keep.txt").read_text() == "user data"
