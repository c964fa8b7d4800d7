"""The database the settings name, for commands that read an existing projection."""

from __future__ import annotations

from pathlib import Path

from runwatch.sinks.store import Store, open_store
from runwatch.stream.errors import UsageError
from runwatch.stream.settings.service import Settings


def open_existing(settings: Settings) -> Store:
    """The configured database, which must exist (a PostgreSQL URL is opened as given)."""
    if settings.database_url is not None:
        return open_store(settings.database_url)
    return open_store(existing_file(settings))


def existing_file(settings: Settings) -> Path:
    """The configured SQLite file, which must exist."""
    if not settings.database.exists():
        raise UsageError(
            f"{settings.database}: no such database; start `runwatch tail` or build one "
            "with `runwatch replay PATH...`, or point --db at it"
        )
    return settings.database
