"""`envdoctor checks`: every check, one line each: id, title and what it looks at."""

from __future__ import annotations


def main(args) -> int:
    from envdoctor import registry
    checks = registry.load()
    if getattr(args, "markdown", False):  # docs/checks.md's table (a test keeps the two equal)
        from envdoctor.report.checks_doc import checks_markdown
        print(checks_markdown(checks), end="")
        return 0
    width = max(len(cid) for cid in checks)
    for cid, c in checks.items():
        print(f"{cid:<{width}}  {c.title}: {c.looks_at}")
    return 0
