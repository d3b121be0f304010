"""Rendering of a finished run. The report never computes anything; it only shows results."""

from __future__ import annotations

from collections import Counter

from envdoctor.errors import EXIT_FAILURES, EXIT_OK
from envdoctor.model import Status, failing_statuses


def counts(results) -> dict[str, int]:
    c = Counter(r.status for r in results)
    return {s.value: c.get(s, 0) for s in Status}


def exit_code(results, strict: bool) -> int:
    bad = failing_statuses(strict)
    return EXIT_FAILURES if any(r.status in bad for r in results) else EXIT_OK
