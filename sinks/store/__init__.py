"""One interface over the projection stores: SQLite (a file path, the default, embedded) and
PostgreSQL (a `postgresql://` or `postgres://` URL, see postgres_sql), whose driver is loaded
only when a PostgreSQL store is opened.

Both keep the same tables (`schema.TABLES`) and give the same rows for the same `Changes` (one
contract test suite runs against both). This package is the only place that speaks SQL: the
runner calls the stores' methods and the named queries of `reads`, `analysis_reads`, `outbox`,
`locks` and `scratch`, each taking a store connection. That SQL is SQLite's, with `?`
placeholders, kept portable: no `INSERT OR REPLACE` (write `ON CONFLICT (key) DO UPDATE`), no
`LIMIT -1`, no PRAGMA; write transactions open with `BEGIN IMMEDIATE`.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from runwatch.sinks.store.api import (
    Connection,
    Cursor,
    OwnershipLost,
    Store,
    StoreError,
)
from runwatch.sinks.store.shared import transaction
from runwatch.sinks.store.sqlite import SqliteStore
from runwatch.sinks.store.target import Target, is_postgres

__all__ = [
    "Connection",
    "Cursor",
    "OwnershipLost",
    "SqliteStore",
    "Store",
    "StoreError",
    "connect",
    "db_errors",
    "is_postgres",
    "open_store",
    "transaction",
]


def db_errors() -> tuple[type[Exception], ...]:
    """What a database call may raise, whichever backend: psycopg's errors only once the
    driver is loaded (no PostgreSQL call can have failed before)."""
    psycopg = sys.modules.get("psycopg")
    return (sqlite3.Error,) if psycopg is None else (sqlite3.Error, psycopg.Error)


def open_store(target: str | Path, *, fast_unsafe: bool = False) -> Store:
    """The store `target` names: a PostgreSQL URL, else a SQLite file path."""
    if is_postgres(target):
        from runwatch.sinks.store.postgres import PostgresStore  # loads psycopg

        return PostgresStore(_url(target), fast_unsafe=fast_unsafe)
    return SqliteStore(Path(target), fast_unsafe=fast_unsafe)


def connect(target: str | Path, *, timeout_s: float = 10.0) -> Connection:
    """A new plain connection to the store (for another thread or process): autocommit,
    waits up to `timeout_s` for a lock."""
    if is_postgres(target):
        from runwatch.sinks.store.postgres_sql import PgConnection

        return PgConnection(Target.parse(_url(target)), lock_timeout_ms=int(timeout_s * 1000))
    db = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
    db.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
    return db


def _url(target: str | Path) -> str:
    """The URL itself: a Path made of one has lost a slash, and guessing it back is unsafe."""
    if isinstance(target, Path):
        raise StoreError(f"{target}: a PostgreSQL URL must be passed as a string, not a path")
    return target
