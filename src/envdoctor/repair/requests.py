"""Typed fix requests: one small frozen dataclass per `envdoctor fix` id.

A check computes a request from the facts; from that one object come both the command the finding
prints (`command`) and the steps `envdoctor fix` runs (`steps`, merged into a plan by repair/plan.py), so
what a user copies and what `fix` does cannot drift apart. The printed form is the copyable equivalent
of the plan's script: for a pip step, the same pip call (the plan's constraints file printed as a pinned
requirement); for any other script, the script's own call with its variables. All quoting is shlex's.

The JSON report carries a request as its remedy's `params` (`to_dict`); `from_dict` reads it back.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, fields
from typing import ClassVar

from envdoctor.facts.python_env import PythonEnv
from envdoctor.model import Remedy
from envdoctor.repair.script import Step, step_command
from envdoctor.venvhint import venv_command, venv_text


def spec_quote(arg: str) -> str:
    """shlex's quoting, and a requirement always in quotes: `>`, `<` and `*` in a spec must never reach
    the shell bare, and every spec of a command then reads alike."""
    quoted = shlex.quote(arg)
    return quoted if quoted.startswith("'") else f"'{arg}'"   # shlex left it bare: no quote inside


def pip_line(python: str, specs, *, options=(), pin: str | None = None, index_url: str | None = None,
             verb: str = "install") -> str:
    """`<python> -m pip <verb> [options] 'spec'… ['torch==pin'] [--index-url URL]`."""
    parts = [shlex.quote(python), "-m", "pip", verb, *map(shlex.quote, options), *map(spec_quote, specs)]
    parts += [spec_quote(pin)] if pin else []
    parts += ["--index-url", shlex.quote(index_url)] if index_url else []
    return " ".join(parts)


class FixRequest:
    """What one finding asks `envdoctor fix <fix_id>` to do."""

    fix_id: ClassVar[str]
    uses_pip: ClassVar[bool] = True          # refused on an externally managed interpreter (PEP 668)
    pin_torch_in_plan: ClassVar[bool] = False  # the plan writes `torch_pin` to a constraints file

    def steps(self) -> list[Step]:
        return []

    def command(self, python: str) -> str | None:
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict):
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class InstallSpecs(FixRequest):
    """Install requirements, torch kept at its build (one pip call per spec in the plan: a failure names
    its package)."""

    fix_id: ClassVar[str] = "packages.install-missing"
    pin_torch_in_plan: ClassVar[bool] = True
    specs: tuple[str, ...]
    torch_pin: str | None = None             # "torch==2.13.0+cpu"

    def steps(self) -> list[Step]:
        return [Step(f"install {s}", "pip-install.sh", [s]) for s in self.specs]

    def command(self, python: str) -> str:
        return pip_line(python, self.specs, pin=self.torch_pin)


@dataclass(frozen=True)
class InstallNewer(InstallSpecs):
    """The first release that works here in place of one that cannot (bitsandbytes < 0.46 on a CPU box)."""

    fix_id: ClassVar[str] = "packages.install-newer"


@dataclass(frozen=True)
class AlignCompanions(FixRequest):
    """torchvision/torchaudio/torchao builds made for the installed torch, from its own index when
    `index_url` is set; `reinstall` swaps a same-version wrong build and leaves torch alone (--no-deps)."""

    fix_id: ClassVar[str] = "packages.align-companions"
    pin_torch_in_plan: ClassVar[bool] = True
    specs: tuple[str, ...]
    index_url: str | None = None
    reinstall: bool = False
    torch_pin: str | None = None

    def _options(self) -> list[str]:
        return ["--force-reinstall", "--no-deps"] if self.reinstall else []

    def steps(self) -> list[Step]:
        index = ["--index-url", self.index_url] if self.index_url else []
        return [Step(f"install {s}" + (f" from {self.index_url}" if self.index_url else ""), "pip-install.sh",
                     self._options() + [s] + index) for s in self.specs]

    def command(self, python: str) -> str:
        # --no-deps: a torch requirement beside it would be force-reinstalled too; without it, torch pinned.
        return pip_line(python, self.specs, options=self._options(),
                        pin=None if self.reinstall else self.torch_pin, index_url=self.index_url)


@dataclass(frozen=True)
class ReinstallTorch(FixRequest):
    """torch (and its installed companions) from an index: another build for these GPUs and driver, or
    (`force`) the same version over a damaged install, its dependencies untouched."""

    fix_id: ClassVar[str] = "torch.reinstall"
    specs: tuple[str, ...]
    index_url: str | None = None
    force: bool = False

    def _options(self) -> list[str]:
        return ["--force-reinstall", "--no-deps"] if self.force else []

    def steps(self) -> list[Step]:
        index = ["--index-url", self.index_url] if self.index_url else []
        return [Step(f"install {' '.join(self.specs)}" + (f" from {self.index_url}" if self.index_url else ""),
                     "pip-install.sh", self._options() + list(self.specs) + index, timeout=3600.0)]

    def command(self, python: str) -> str:
        return pip_line(python, self.specs, options=self._options(), index_url=self.index_url)


@dataclass(frozen=True)
class RebuildFlashAttn(FixRequest):
    """flash-attn's release wheel for this torch if it exists, else a source build (fixes/flash-attn.sh);
    torch stays `torch_pin` (the script writes it to its own constraints file)."""

    fix_id: ClassVar[str] = "flash-attn.rebuild"
    version: str
    wheel_url: str
    max_jobs: int
    nvcc_threads: int
    archs: str = ""
    torch_pin: str | None = None

    def steps(self) -> list[Step]:
        env = {"FA_VERSION": self.version, "FA_WHEEL_URL": self.wheel_url, "MAX_JOBS": str(self.max_jobs),
               "NVCC_THREADS": str(self.nvcc_threads), "FLASH_ATTN_CUDA_ARCHS": self.archs,
               "TORCH_PIN": self.torch_pin or ""}
        return [Step(f"flash-attn {self.version}: prebuilt wheel if one matches, else a source build",
                     "flash-attn.sh", [], env, timeout=4 * 3600.0)]

    def command(self, python: str) -> str:
        return step_command(self.steps()[0], python)


@dataclass(frozen=True)
class PureWheel(FixRequest):
    """A release's pure-Python wheel (py3-none-any) in place of its CUDA platform wheel (fixes/pure-wheel.sh,
    --no-deps: torch untouched)."""

    fix_id: ClassVar[str] = "packages.pure-wheel"
    specs: tuple[str, ...]

    def steps(self) -> list[Step]:
        return [Step(f"install the py3-none-any wheel of {' '.join(self.specs)}", "pure-wheel.sh", list(self.specs))]

    def command(self, python: str) -> str:
        return step_command(self.steps()[0], python)


@dataclass(frozen=True)
class RemoveLeftovers(FixRequest):
    """Delete `~name` leftovers of interrupted pip runs (fixes/remove-leftovers.sh refuses anything else)."""

    fix_id: ClassVar[str] = "packages.remove-leftovers"
    uses_pip: ClassVar[bool] = False
    paths: tuple[str, ...]

    def steps(self) -> list[Step]:
        names = ", ".join(p.rsplit("/", 1)[-1] for p in self.paths)
        return [Step(f"delete {len(self.paths)} leftover(s): {names}", "remove-leftovers.sh", list(self.paths),
                     timeout=600.0)]

    def command(self, python: str) -> str:
        return "rm -rf -- " + " ".join(map(shlex.quote, self.paths))


@dataclass(frozen=True)
class EditPth(FixRequest):
    """Remove line `line` (which reads `text`) of a .pth file: a file edit with a backup, no script."""

    fix_id: ClassVar[str] = "packages.pth-edit"
    uses_pip: ClassVar[bool] = False
    file: str
    line: int
    text: str

    def command(self, python: str) -> str:
        q = shlex.quote(self.file)
        return f"cp -p {q} {shlex.quote(self.file + '.bak')} && sed -i {shlex.quote(f'{self.line}d')} {q}"


@dataclass(frozen=True)
class EditWslConfig(FixRequest):
    """Set [wsl2] values in a .wslconfig: the same editor as `envdoctor wslconfig set`."""

    fix_id: ClassVar[str] = "wsl.memory"
    uses_pip: ClassVar[bool] = False
    path: str
    values: tuple[tuple[str, str], ...]

    def command(self, python: str) -> str:
        return shlex.join(["envdoctor", "wslconfig", "set", self.path, *(f"{k}={v}" for k, v in self.values)])

    def to_dict(self) -> dict:
        return {"path": self.path, "values": dict(self.values)}

    @classmethod
    def from_dict(cls, data: dict):
        values = data["values"]
        return cls(data["path"], tuple((str(k), str(v)) for k, v in
                                       (values.items() if isinstance(values, dict) else values)))


REQUESTS: dict[str, type[FixRequest]] = {c.fix_id: c for c in (
    InstallSpecs, InstallNewer, AlignCompanions, ReinstallTorch, RebuildFlashAttn, PureWheel, RemoveLeftovers,
    EditPth, EditWslConfig)}


def coerce(fix_id: str, items) -> list[FixRequest]:
    """Requests of one fix id; a dict (a report's `params`) is read back into its request."""
    cls = REQUESTS[fix_id]
    out: list[FixRequest] = []
    for item in items:
        req = item if isinstance(item, FixRequest) else cls.from_dict(item)
        if req.fix_id != fix_id:
            raise ValueError(f"a {req.fix_id} request given to {fix_id}")
        if req not in out:
            out.append(req)
    return out


def externally_managed(python: PythonEnv) -> bool:
    """PEP 668: the distribution's package manager owns this interpreter (a venv or conda env of it is fine)."""
    return python.externally_managed and not python.in_venv and not python.conda


def remedy(request: FixRequest, python: PythonEnv, text: str | None = None) -> Remedy:
    """The finding's remedy: the request's printed command, its fix id, the request itself. Into an
    externally managed interpreter no pip command is printed (pip refuses it, and `fix` refuses it too):
    the venv route instead, with the same request's command for the venv's python."""
    if request.uses_pip and externally_managed(python):
        return venv_route(python, request.command("python"), text)   # `python`: the venv's, once activated
    return Remedy(request.command(python.executable), text, request.fix_id, request)


def venv_route(python: PythonEnv, then: str | None, text: str | None = None) -> Remedy:
    """A pip remedy for an externally managed interpreter, as the venv route: no fix id (no fix applies)."""
    return Remedy(venv_command(python),
                  (f"{text} " if text else "") + f"{python.executable} is externally managed (PEP 668): pip must not "
                  "install into it, so this is done in a virtual environment. " + venv_text(python)
                  + (f" Then, in the activated venv: {then}" if then else ""))


def pip_remedy(python: PythonEnv, command: str | None, text: str | None = None) -> Remedy:
    """A pip command that no fix runs (a reinstall, an uninstall, a change of torch itself): printed as is,
    or, into an externally managed interpreter, as the venv route."""
    if command and externally_managed(python):
        return venv_route(python, command.replace(shlex.quote(python.executable), "python"), text)
    return Remedy(command, text)


def torch_pin(python: PythonEnv) -> str | None:
    """`torch==<installed version>`: what keeps torch where it is."""
    torch = python.get("torch")
    return f"torch=={torch.version}" if torch is not None and torch.version else None
