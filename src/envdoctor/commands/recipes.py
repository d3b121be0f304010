"""`envdoctor recipes list|show NAME|validate FILE`: the known-good stacks."""

from __future__ import annotations

import sys
from pathlib import Path

from envdoctor.errors import UsageError


def main(args) -> int:
    from envdoctor import recipes
    if args.action == "list":
        for name, path in recipes.bundled().items():
            r = recipes.load(str(path))
            print(f"{name:<18} {r.description}")
        return 0
    if args.action == "show":
        if not args.name:
            raise UsageError("recipes show needs a recipe name")
        r = recipes.load(args.name)
        print(open(r.path, encoding="utf-8").read(), end="")
        return 0
    if not args.name:
        raise UsageError("recipes validate needs a file")
    _recipe, errors = recipes.validate(Path(args.name))
    for e in errors:
        print(e, file=sys.stderr)
    print(f"{args.name}: {'valid' if not errors else f'{len(errors)} error(s)'}")
    return 1 if errors else 0
