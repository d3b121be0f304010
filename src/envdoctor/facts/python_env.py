"""Facts about the target Python environment, from the stdlib-only probe run by that interpreter."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from packaging.utils import canonicalize_name

from envdoctor import target
from envdoctor.context import Context
from envdoctor.errors import FactError
from envdoctor.facts import prestart
from envdoctor.system import System

@dataclass
class Distribution:
    name: str | None
    version: str | None
    path: str
    location: str
    kind: str
    requires: list[str] = field(default_factory=list)
    requires_python: str | None = None
    provides_extra: list[str] = field(default_factory=list)
    installer: str | None = None
    direct_url: dict | None = None
    problems: list[str] = field(default_factory=list)
    dir_name: str | None = None
    dir_version: str | None = None
    has_record: bool | None = None
    files: list[str] | None = None

    @property
    def key(self) -> str:
        return canonicalize_name(self.name or self.dir_name or Path(self.path).name)

    @property
    def label(self) -> str:
        return f"{self.name or self.dir_name} {self.version or self.dir_version or '?'}"


@dataclass
class PythonEnv:
    executable: str
    reason: str
    version: list
    version_string: str
    implementation: str
    bits: int
    free_threaded: bool
    prefix: str
    base_prefix: str
    in_venv: bool
    conda: bool
    externally_managed: bool
    user_site_enabled: bool
    purelib: str
    platlib: str
    sys_path: list[str]
    glibc: str | None
    markers: dict[str, str]
    distributions: list[Distribution]
    strays: list[str]
    probe_s: float = 0.0
    pth: list[dict] = field(default_factory=list)          # {file, line, text, kind, folder} of .pth lines
    pythonpath: list[str] = field(default_factory=list)    # PYTHONPATH entries the probe ran with

    def __post_init__(self) -> None:
        self.cache: dict = {}  # derived analyses (deps.analyze), computed once per run
        self._by_key: dict[str, list[Distribution]] = {}
        for d in self.distributions:  # sys.path order: the first one is the one Python imports
            self._by_key.setdefault(d.key, []).append(d)

    def get(self, name: str) -> Distribution | None:
        found = self._by_key.get(canonicalize_name(name))
        return found[0] if found else None

    def installs(self, name: str) -> list[Distribution]:
        return list(self._by_key.get(canonicalize_name(name), []))

    def by_key(self) -> dict[str, list[Distribution]]:
        return dict(self._by_key)

    def pip_command(self, verb: str = "install") -> str:
        return f"{_quote(self.executable)} -m pip {verb}"

    def to_dict(self) -> dict:
        out = {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "cache"}
        # The JSON report keeps what checks use, not every installed file. (Shallow copies: asdict's
        # deep copy of a hundred distributions costs more than the whole probe.)
        out["distributions"] = [{k: v for k, v in vars(d).items() if k != "files"} for d in self.distributions]
        return out


def _quote(s: str) -> str:
    import shlex
    return shlex.quote(s)


def parse_probe_output(raw: str, reason: str) -> PythonEnv:
    data = json.loads(raw)
    dists = [Distribution(**{k: v for k, v in d.items() if k in Distribution.__dataclass_fields__})
             for d in data.pop("distributions")]
    data.pop("schema", None)
    known = PythonEnv.__dataclass_fields__
    return PythonEnv(reason=reason, distributions=dists, **{k: v for k, v in data.items() if k in known})


def probe_argv(ctx: Context, with_files: bool = False) -> list[str]:
    return target.argv(ctx.python, "probe", *(["--files"] if with_files else []))


def probe_python(system: System, ctx: Context, with_files: bool = False) -> PythonEnv:
    argv = probe_argv(ctx, with_files)
    res = prestart.take(system, argv) or system.run(argv, timeout=ctx.probe_timeout)
    if not res.ok:
        tail = "\n".join(res.stderr.strip().splitlines()[-5:])
        raise FactError(f"could not probe {ctx.python}: {res.describe()}" + (f"\n{tail}" if tail else ""))
    try:
        env = parse_probe_output(res.stdout, ctx.python_reason)
    except (ValueError, KeyError, TypeError) as exc:
        raise FactError(f"could not probe {ctx.python}: unreadable probe output ({exc})") from exc
    env.probe_s = res.duration_s
    return env
