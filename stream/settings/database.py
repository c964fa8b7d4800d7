"""Opening the database the settings name, for commands that read an existing projection."""

from __future__ import annotations

from runwatch.sinks.store import Store, open_store
from runwatch.stream.errors import UsageError
from runwatch.stream.settings.service import Settings


def open_existing(settings: Settings) -> Store:
    """The configured database, which must exist (a PostgreSQL URL is opened as given)."""
    if settings.database_url is not None:
        return open_store(settings.database_url)
    if not settings.database.exists():
        raise UsageError(
            f"{settings.database}: no such database; build one with "
            "`runwatch replay PATH...` or point --db at it"
        )
    return open_store(settings.database)
