"""`envdoctor install`: a fresh venv with a recipe's stack, installed in the order that works —
torch from its index first, then the rest with torch pinned, source builds last without build
isolation — then the doctor's check of the result."""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

from envdoctor import engine, registry
from envdoctor.buildjobs import NVCC_THREADS, flash_attn_jobs
from envdoctor.context import Context
from envdoctor.errors import UsageError
from envdoctor.facts.gpu import GpuFacts, probe_gpu
from envdoctor.facts.host import probe_host
from envdoctor.gpu_compat import coverage
from envdoctor.recipes import Recipe, bundled, load
from envdoctor.redact import RedactedLog
from envdoctor.steps import Step, freeze, run_steps
from envdoctor.system import System


def pick(system: System, ctx: Context) -> tuple[Recipe, str]:
    """The recipe for this machine: every GPU covered and the driver new enough; no GPU: cpu."""
    from envdoctor.deps import parse_version
    gpu = probe_gpu(system, ctx)
    if not gpu.present:
        return load("cpu"), "no NVIDIA GPU found"
    fitting = []
    for name, path in bundled().items():
        r = load(str(path))
        if not r.archs:
            continue
        covered = all(g.cc and coverage(g.cc, r.archs, []).sass for g in gpu.gpus)
        driver_ok = not r.min_driver or (parse_version(gpu.driver) or parse_version("0")) >= parse_version(r.min_driver)
        if covered and driver_ok:
            fitting.append((parse_version(r.min_driver or "0"), r))
    if not fitting:
        raise UsageError(f"no bundled recipe fits {', '.join(g.name for g in gpu.gpus)} with driver {gpu.driver}; "
                         "name one with --recipe (envdoctor recipes list)")
    fitting.sort(key=lambda x: x[0])
    recipe = fitting[-1][1]  # the newest stack this driver runs
    return recipe, f"{', '.join(sorted({g.name for g in gpu.gpus}))}, driver {gpu.driver}"


def steps_for(recipe: Recipe, py: str, constraints: Path, build_env: dict[str, str]) -> list[Step]:
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    torch = pip + [recipe.torch_spec, *recipe.companions] + (["--index-url", recipe.index_url] if recipe.index_url else [])
    steps = [Step(f"torch {recipe.torch_version} ({recipe.torch_index})" +
                  (f" with {', '.join(recipe.companions)}" if recipe.companions else ""), torch)]
    if recipe.packages:
        steps.append(Step("the stack, torch pinned", pip + ["--constraint", str(constraints), *recipe.packages]))
    if recipe.build:
        steps.append(Step("build tools for the source builds",
                          pip + ["--constraint", str(constraints), "ninja", "packaging", "psutil", "wheel"]))
        steps.append(Step(f"{', '.join(recipe.build)} against the installed torch (no build isolation)",
                          pip + ["--constraint", str(constraints), "--no-build-isolation",
                                                  "--no-cache-dir", *recipe.build], build_env, 4 * 3600.0))
    return steps


def run_install(args, system: System, out=sys.stdout) -> int:
    venv = Path(args.venv).expanduser().absolute()
    if venv.exists() and (not venv.is_dir() or any(venv.iterdir())):
        raise UsageError(f"--venv {venv}: exists and is not empty; envdoctor install only creates fresh venvs")
    base = args.base_python or sys.executable
    ctx = Context(python=base, python_reason="--base-python")
    recipe, why = (load(args.recipe), "--recipe") if args.recipe else pick(system, ctx)
    if recipe.python:
        from packaging.specifiers import SpecifierSet
        res = system.run([base, "-c", "import platform; print(platform.python_version())"], timeout=30.0)
        have = res.stdout.strip() if res.ok else None
        if have is None:
            raise UsageError(f"--base-python {base}: cannot run it ({res.describe()})")
        if have not in SpecifierSet(recipe.python):
            raise UsageError(f"recipe {recipe.name} needs Python {recipe.python}; {base} is {have} "
                             "(pass --base-python)")
    host = probe_host(system, ctx)
    gpu: GpuFacts = probe_gpu(system, ctx)
    archs = ";".join(sorted({f"{g.cc[0]}{g.cc[1]}" for g in gpu.gpus if g.cc}))
    build_env = {"MAX_JOBS": str(flash_attn_jobs(host)), "NVCC_THREADS": str(NVCC_THREADS)}
    if archs:
        build_env["FLASH_ATTN_CUDA_ARCHS"] = archs
    py = str(venv / "bin" / "python")
    constraints = venv / "envdoctor-constraints.txt"
    steps = [Step(f"create the venv with {base}", [base, "-m", "venv", str(venv)], timeout=300.0)]
    steps += steps_for(recipe, py, constraints, build_env)
    out.write(f"envdoctor install · recipe {recipe.name} ({why}) · {venv}\n")
    for i, s in enumerate(steps, 1):
        env = " ".join(f"{k}={v}" for k, v in s.env.items())
        out.write(f"  {i}. {s.title}\n     $ {(env + ' ') if env else ''}{' '.join(s.argv)}\n")
    if args.dry_run:
        out.write("--dry-run: nothing was created.\n")
        return 0
    log = venv.parent / f"{venv.name}.envdoctor-install-{datetime.datetime.now():%Y%m%d-%H%M%S}.log"
    def announce(i: int, n: int, step: Step) -> None:
        out.write(f"[{i}/{n}] {step.title} …\n")
        out.flush()

    def pin_torch(i: int, step: Step) -> None:
        if i == 2:  # torch is in: pin exactly what was installed, build tag included
            try:
                line = freeze(system, py).get("torch", "")
            except RuntimeError:
                line = ""
            constraints.write_text((line if line.lower().startswith("torch==") else recipe.torch_spec) + "\n")

    with RedactedLog(log) as fh:
        failed = run_steps(system, steps, fh, announce, after=pin_torch)
    if failed is not None:
        out.write(f"failed: {failed.result.describe()} (full log: {log})\n"
                  + "".join(f"  | {t}\n" for t in failed.tail))
        out.write(f"The venv {venv} is incomplete; delete it before trying again.\n")
        return 1
    out.write(f"installed (log: {log}); checking the result:\n")
    from envdoctor.report import exit_code, text
    check_ctx = Context(python=py, python_reason="venv created by envdoctor install", recipe=recipe.name)
    checks = [c for c in registry.load().values() if c.option in (None, "recipe")]
    run = engine.run_checks(checks, registry.PROVIDERS, system, check_ctx)
    from envdoctor import __version__
    text.render(run, f"{py} (recipe {recipe.name})", __version__, out, env=os.environ)
    return exit_code(run.results, strict=False)


def main(args) -> int:
    return run_install(args, System())
