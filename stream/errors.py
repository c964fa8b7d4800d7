"""The errors every layer may raise and the exit codes `runwatch` maps them to.

Neutral ground: the CLI imports these, and so do analysis, services and sources, so that
nothing below the CLI ever imports from it.
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments; printed as one line, exit code 2."""


class InputError(Exception):
    """A path argument that names nothing readable; exit code 2."""


class ServiceError(Exception):
    """The service cannot start; the message says why and what to do. Exit code 1."""
