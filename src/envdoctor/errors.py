"""Expected failures, and the exit codes they map to (in one place: cli.main)."""

from __future__ import annotations

EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class EnvdoctorError(Exception):
    """An expected failure with a message for the user."""

    exit_code = EXIT_INTERNAL


class UsageError(EnvdoctorError):
    exit_code = EXIT_USAGE


class FactError(EnvdoctorError):
    """A probe could not read what it needed; the checks that depend on it become `error`."""
