"""`envdoctor checks`: every check, one line each: id, title and what it looks at."""

from __future__ import annotations


def main(args) -> int:
    from envdoctor import registry
    checks = registry.load()
    width = max(len(cid) for cid in checks)
    for cid, c in checks.items():
        print(f"{cid:<{width}}  {c.title}: {c.looks_at}")
    return 0
