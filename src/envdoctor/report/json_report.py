"""The machine-readable report (schema: docs/report.schema.json, described in docs/json-report.md)."""

from __future__ import annotations

import json
import os
import time
from typing import TextIO

from envdoctor.engine import Run
from envdoctor.redact import redact
from envdoctor.report import counts

SCHEMA_VERSION = 5  # 5: config.memory's data gains fit_error;
#   4: config.memory's data names its allocator setting, fact train_config alloc_env;
#   3: results' "data" (config.memory's estimate); 2: "node", remedy "params", facts wsl,
#   train_config, datasets, base_model, model_dir (docs/report.schema.json)


def build(run: Run, target: dict, version: str, exit_code: int) -> dict:
    facts = {}
    for name, fact in sorted(run.facts.items()):
        if fact.error is not None:
            facts[name] = {"error": fact.error}
        else:
            facts[name] = fact.value.to_dict()
    return redact({
        "schema_version": SCHEMA_VERSION,
        "envdoctor_version": version,
        # datetime.now(timezone.utc).isoformat(timespec="seconds")'s format, without importing datetime
        "created": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "duration_s": round(run.duration_s, 4),
        "target": target,
        "node": node(),
        "summary": {**counts(run.results), "exit_code": exit_code},
        "facts": facts,
        "results": [r.to_dict() for r in run.results],
    })


def node() -> dict:
    """Which machine wrote this report (for `envdoctor report merge` over a fleet)."""
    env = os.environ
    return {k: v for k, v in {"hostname": _hostname(), "slurm_node": env.get("SLURMD_NODENAME"),
                              "slurm_job": env.get("SLURM_JOB_ID"), "rank": env.get("RANK") or env.get("SLURM_PROCID")
                              }.items() if v}


def _hostname() -> str:
    """platform.node() without importing platform (it compiles regexes at import): both are uname's node."""
    if hasattr(os, "uname"):
        return os.uname().nodename
    import platform
    return platform.node()


def render(run: Run, target: dict, version: str, exit_code: int, stream: TextIO) -> None:
    # Compact, through json.dumps: only its one-shot encoding uses the C encoder (json.dump to a stream runs
    # the pure-Python one, ~5x slower on a report); pipe through `jq` to read it.
    stream.write(json.dumps(build(run, target, version, exit_code)) + "\n")
