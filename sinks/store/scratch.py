"""Where a replay builds, and how the finished build replaces the target at once: a SQLite
file beside the target, renamed over it, or a PostgreSQL schema beside the target schema,
swapped in by one transaction. Either way readers see the old projection or the new one."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Protocol

from runwatch.sinks.atomic import fsync_path
from runwatch.sinks.store.api import Store
from runwatch.sinks.store.sqlite import SqliteStore
from runwatch.sinks.store.target import Target, is_postgres, with_schema

JOIN_WAIT_MS = 600_000
"""How long a connection to a SQLite build waits for another writer of it."""


class Scratch(Protocol):
    """A build in progress: `open` it, then `publish` it over the target or `discard` it.
    `target_name` is the target as it may be printed (a URL without its password)."""

    target_name: str

    def open(self) -> Store: ...
    def join(self) -> Store: ...
    def publish(self) -> None: ...
    def discard(self) -> None: ...


def scratch_for(target: Path | str) -> Scratch:
    """The scratch build that will replace `target` (a SQLite path or a PostgreSQL URL)."""
    if is_postgres(target):
        return PostgresScratch(str(target))
    return SqliteScratch(Path(target))


class SqliteScratch:
    """A file beside the target, renamed over it."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.target_name = str(target)
        self.path = target.with_name(f".{target.name}.replay-{os.getpid()}")

    def open(self) -> Store:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        remove_database(self.path)
        return self.join()

    def join(self) -> Store:
        """A connection to the build; after `open`, another one, for a worker process that
        writes rows beside the builder. Each waits for the file lock as long as the others
        hold it (a batch's rows)."""
        store = SqliteStore(self.path, fast_unsafe=True)
        store.db.execute(f"PRAGMA busy_timeout={JOIN_WAIT_MS}")
        return store

    def publish(self) -> None:
        fsync_path(self.path)
        _retire(self.target)
        os.replace(self.path, self.target)
        fsync_path(self.target.parent)

    def discard(self) -> None:
        remove_database(self.path)


class PostgresScratch:
    """A schema beside the target schema, swapped in by one transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        target = Target.parse(url)
        self.schema, self.target_name = target.schema, target.printable
        self.scratch = f"{self.schema[:40]}_replay_{os.getpid()}"

    def open(self) -> Store:
        self.discard()
        return self.join()

    def join(self) -> Store:
        """Another connection to the opened build, for a worker process."""
        from runwatch.sinks.store.postgres import PostgresStore  # loads psycopg

        return PostgresStore(with_schema(self.url, self.scratch), fast_unsafe=True)

    def publish(self) -> None:
        from runwatch.sinks.store.postgres import swap_schema

        swap_schema(self.url, self.scratch, self.schema)

    def discard(self) -> None:
        from runwatch.sinks.store.postgres import drop_schema

        drop_schema(with_schema(self.url, self.scratch))


def _retire(target: Path) -> None:
    """Fold the old database's WAL into it and drop the WAL, so it cannot be replayed onto
    the new file that takes its name."""
    if target.exists():
        try:
            old = sqlite3.connect(target)
            old.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            old.close()
        except sqlite3.DatabaseError:
            pass  # not a database we can open: it is being replaced anyway
    for suffix in ("-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)


def remove_database(path: Path) -> None:
    """A SQLite file and its companions, gone."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
