"""Deep mode: load every compiled extension for real, in subprocesses of the target interpreter, to
compare with what the ELF scan predicted. A crash or hang names the extension that caused it, and the
rest are loaded in a fresh process."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from envdoctor import target
from envdoctor.context import Context
from envdoctor.facts.binaries import BinaryFacts
from envdoctor.facts.gpu import SMOKE_MARK
from envdoctor.system import System


@dataclass
class ImportOutcomes:
    outcomes: dict[str, dict] = field(default_factory=dict)   # path -> {ok, error}

    def to_dict(self) -> dict:
        return asdict(self)


def load_for_real(system: System, ctx: Context, targets: list[dict], preload_torch: bool) -> dict[str, dict]:
    results: dict[str, dict] = {}
    todo = list(targets)
    while todo:
        argv = target.argv(ctx.python, "importcheck", SMOKE_MARK, "imports")
        argv += ["--preload-torch"] if preload_torch else []
        res = system.run(argv, timeout=ctx.smoke_timeout, input=json.dumps(todo))
        for line in res.stdout.splitlines():
            try:
                row = json.loads(line)
                results[row["path"]] = {"ok": row["ok"], "error": row["error"]}
            except (ValueError, KeyError, TypeError):
                continue
        left = [t for t in todo if t["path"] not in results]
        if not left or res.ok:
            break
        # The first one without an answer is the one that crashed or hung the process.
        culprit = left[0]
        why = (f"hung: no answer within {ctx.smoke_timeout:g} s" if res.timed_out else
               f"crashed the interpreter ({res.describe()})")
        results[culprit["path"]] = {"ok": False, "error": why}
        todo = left[1:]
    return results


def probe_imports(system: System, ctx: Context, binaries: BinaryFacts) -> ImportOutcomes:
    targets = [{"path": e.path, "module": e.module} for e in binaries.extensions if not e.unused]
    return ImportOutcomes(load_for_real(system, ctx, targets, preload_torch=True) if targets else {})
