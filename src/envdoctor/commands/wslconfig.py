"""`envdoctor wslconfig set FILE key=value …`: the .wslconfig editor `fix wsl.memory` uses, on any file.
Prints the diff, backs the file up byte for byte, writes atomically; --dry-run only prints."""

from __future__ import annotations

import datetime
import sys

from envdoctor.errors import UsageError
from envdoctor.repair.apply import write_edits
from envdoctor.repair.plan import FileEdit, Plan
from envdoctor.system import System
from envdoctor.wslconfig_edit import plan_file


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{pair!r}: expected KEY=VALUE, like memory=48GB")
        if key.lower() in (k.lower() for k in out):
            raise UsageError(f"{key} is given twice")
        out[key] = value
    return out


def run_wslconfig(args, system: System, out=sys.stdout) -> int:
    updates = parse_pairs(args.pairs)
    fp = plan_file(system, args.file, updates)
    for note in fp.notes:
        out.write(f"note: {note}\n")
    if not fp.changed:
        out.write(f"{fp.path} already says {', '.join(f'{k}={v}' for k, v in updates.items())}: nothing to change\n")
        return 0
    out.write(fp.diff)
    if args.dry_run:
        out.write("--dry-run: nothing was changed.\n")
        return 0
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    plan = Plan("wslconfig.set", f"set {', '.join(updates)}", [], [], edits=[FileEdit(fp.path, fp.old, fp.new, fp.diff)])
    write_edits(system, plan, stamp, lambda m: out.write(m.strip() + "\n"))
    out.write("WSL reads it when the VM starts: in Windows, wsl --shutdown, wait ~8 s, reopen the distro.\n")
    return 0


def main(args) -> int:
    return run_wslconfig(args, System())
