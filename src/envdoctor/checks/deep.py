"""Deep mode (`envdoctor check --deep`): smoke tests of the stack on the GPU, each in its own process,
and the statically read arch list cross-checked against torch's own."""

from __future__ import annotations

from typing import TYPE_CHECKING

from envdoctor.facts.binaries import BinaryFacts
from envdoctor.facts.gpu import GpuFacts
from envdoctor.facts.python_env import PythonEnv
from envdoctor.facts.torch_build import TorchFacts
from envdoctor.model import Item, Remedy, Result, Status, from_items, ok, skip
from envdoctor.registry import check

if TYPE_CHECKING:  # annotations only: the facts' modules load when their checks run
    from envdoctor.facts.imports import ImportOutcomes
    from envdoctor.facts.smoke import SmokeResult

STATUS = {"ok": Status.OK, "warn": Status.WARN, "fail": Status.FAIL, "skip": Status.SKIP}


def remedy(stage: str, python: PythonEnv) -> Remedy:
    return {
        "torch": Remedy(text="The GPU checks above name the cause (driver, build, arch)."),
        "bitsandbytes": Remedy(f"{python.executable} -m bitsandbytes",
                               "Its self-check names the CUDA library it looked for; BNB_CUDA_VERSION overrides "
                               "the choice, a reinstall fixes a broken wheel."),
        # No build command of its own: binaries.flash_attn prints the one `envdoctor fix flash-attn.rebuild`
        # runs (release wheel first, jobs sized to memory), so the two never disagree.
        "flash_attn": Remedy(text="Install the flash-attn build made for this torch, CUDA, ABI and Python: "
                                  "binaries.flash_attn prints the command, the same one `envdoctor fix "
                                  "flash-attn.rebuild` runs."),
        "torchao": Remedy(text="Install the torchao release built for this torch (see packages.companions)."),
    }[stage]


def from_smoke(s: SmokeResult, python: PythonEnv) -> Result:
    status = STATUS.get(s.status, Status.FAIL)
    timing = f" ({s.seconds:.1f} s)" if s.seconds else ""
    return Result(status, s.message + (timing if status == Status.OK else ""), list(s.details),
                  remedy(s.stage, python) if status in (Status.FAIL, Status.WARN) else None)


def _smoke_check(stage: str, title: str, looks_at: str):
    def run(gpu: GpuFacts, python: PythonEnv, **smoke: SmokeResult) -> Result:
        return from_smoke(smoke[f"smoke_{stage}"], python)
    return check(f"deep.{stage}", title, "Deep", looks_at, needs=(f"smoke_{stage}", "gpu", "python"),
                 option="deep", timeout=5.0, applies=("gpu",))(run)


smoke_torch = _smoke_check("torch", "torch on the GPU", "import torch, CUDA init and a bf16 matmul, in a subprocess")
smoke_bitsandbytes = _smoke_check("bitsandbytes", "bitsandbytes NF4",
                                  "a bitsandbytes NF4 Linear4bit forward and backward on the GPU, in a subprocess")
smoke_flash_attn = _smoke_check("flash_attn", "flash-attn", "a flash-attn forward on a tiny tensor, in a subprocess")
smoke_torchao = _smoke_check("torchao", "torchao",
                             "import torchao (and whether it skips its C++ extensions), in a subprocess")


@check("deep.arch_list", "Arch list cross-check", "Deep",
       "the archs read from torch's fat binaries equal torch.cuda.get_arch_list()",
       needs=("smoke_torch", "torch", "gpu"), option="deep", timeout=5.0, applies=("gpu",))
def arch_list(smoke_torch: SmokeResult, torch: TorchFacts, gpu: GpuFacts) -> Result:
    runtime = smoke_torch.data.get("arch_list")
    if not runtime:
        return skip("torch reported no arch list (not a CUDA build, or the smoke test failed)")
    # get_arch_list() names the build archs; hand-tuned kernels (sm_89, sm_90a) are "extra".
    static = set(torch.archs["sass"] + torch.archs["ptx"])
    extra = torch.archs.get("extra") or []
    if static == set(runtime):
        return ok(f"fat binaries and torch agree: {', '.join(runtime)}",
                  [f"a few kernels also for {', '.join(extra)}"] if extra else [])
    return Result(Status.WARN, "the archs read from torch's libraries differ from torch.cuda.get_arch_list()", [
        f"read from fat binaries: {', '.join(sorted(static))}", f"torch.cuda.get_arch_list(): {', '.join(runtime)}",
        "envdoctor's static arch check may be wrong for this build; the smoke test result above is authoritative."])


@check("deep.imports", "Extensions loaded for real", "Deep",
       "every compiled extension imported (or dlopen'ed) after torch in a subprocess, against the prediction",
       needs=("imports", "binaries"), option="deep", timeout=5.0)
def imports(imports: ImportOutcomes, binaries: BinaryFacts) -> Result:
    items = []
    for ext in binaries.extensions:
        real = imports.outcomes.get(ext.path)
        if ext.unused or real is None:
            continue
        name = ext.module or ext.rel
        predicted_ok = not ext.will_fail
        if predicted_ok == real["ok"]:
            items.append(Item(Status.OK, f"{name}: {'loads' if real['ok'] else 'fails'}, as predicted"))
        else:
            items.append(Item(Status.FAIL, f"{name}: predicted to {'load' if predicted_ok else 'fail'}, but it "
                                           f"{'loads' if real['ok'] else 'fails'}",
                              (real["error"] or "loaded without error",),
                              Remedy(text="A disagreement is a gap in envdoctor's scan: please report it with "
                                          "`envdoctor check --deep --json`.")))
    if not items:
        return skip("no compiled extensions link against torch")
    agreed = sum(1 for i in items if i.status == Status.OK)
    return from_items(items, f"{agreed} extensions loaded for real: every prediction held",
                      f"{len(items) - agreed} of {len(items)} predictions disagreed with a real load")
