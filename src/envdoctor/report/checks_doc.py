"""`envdoctor checks --markdown`: the registry as the table at the end of docs/checks.md (a test fails when the
two differ, so the reference cannot drift from the code)."""

from __future__ import annotations

# The CLI option that turns a check on, as a reader types it.
OPTIONS = {"deep": "`--deep`", "recipe": "`--recipe NAME`", "config": "`--config FILE`", "model": "`--model DIR`"}


def checks_markdown(checks: dict) -> str:
    lines = ["| id | title | runs | looks at |", "|---|---|---|---|"]
    for cid, c in checks.items():
        runs = "always" if c.option is None else f"with {OPTIONS.get(c.option, c.option)}"
        looks = c.looks_at.replace("|", "\\|")
        lines.append(f"| `{cid}` | {c.title} | {runs} | {looks} |")
    return "\n".join(lines) + "\n"
