"""One interface over the projection stores: SQLite (a file path, the default, embedded) and
PostgreSQL (a `postgresql://` or `postgres://` URL, see postgres_dialect).

Both keep the same tables and give the same rows for the same `Changes` (one contract test
suite runs against both). `store.db` and `connect()` take SQLite-style SQL with `?`
placeholders; keep it simple and portable: no `INSERT OR REPLACE` (write `ON CONFLICT (key)
DO UPDATE`), no `LIMIT -1`, no PRAGMA; open write transactions with `BEGIN IMMEDIATE`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Final, Protocol

import psycopg

from .postgres_dialect import PgConnection, Target
from .postgres_store import PostgresStore
from .sqlite_store import (
    Changes,
    Checkpoint,
    OwnershipLost,
    SqliteStore,
    StoreError,
    fetch_dicts,
    run_detail,
)

__all__ = ["DB_ERRORS", "Connection", "Cursor", "OwnershipLost", "PostgresStore", "SqliteStore",
           "Store", "StoreError", "connect", "fetch_dicts", "is_postgres", "open_store",
           "run_detail", "transaction"]

DB_ERRORS: Final = (sqlite3.Error, psycopg.Error)
"""What a database call may raise, whichever the backend."""


class Cursor(Protocol):
    """The part of a DB-API cursor callers use."""

    @property
    def description(self) -> Any: ...
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """A connection that takes `?` placeholders and explicit BEGIN … COMMIT (autocommit)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...
    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Cursor: ...
    def close(self) -> None: ...


class Store(Protocol):
    """A projection store: everything one `commit` is given lands in one transaction."""

    @property
    def path(self) -> Path | str:
        """Where the projection lives, printable (a PostgreSQL URL without its password)."""
    @property
    def db(self) -> Connection: ...
    def transaction(self) -> AbstractContextManager[Any]: ...
    def source_id(self, path: str) -> int: ...
    def commit(self, changes: Changes, seen_at: str) -> None: ...
    def write(self, changes: Changes, seen_at: str) -> None: ...
    def position(self, stream: str) -> int | None: ...
    def load_group(self, group_key: str) -> tuple[dict[str, Any] | None, set[str]]: ...
    def open_runs(self) -> Iterator[tuple[str, str, int]]: ...
    def checkpoints(self) -> dict[tuple[int, int], Checkpoint]: ...
    def alert_states(self) -> Iterator[tuple[str, str, dict[str, Any]]]: ...
    def unevaluated(self) -> list[tuple[int, dict[str, Any]]]: ...
    def counters(self) -> dict[str, int]: ...
    def set_meta(self, items: Iterable[tuple[str, str]]) -> None: ...
    def meta(self) -> dict[str, str]: ...
    def snapshot(self) -> dict[str, list[dict[str, Any]]]: ...
    def finalize(self) -> None: ...
    def close(self) -> None: ...


def is_postgres(target: str | Path) -> bool:
    """A `postgresql://` or `postgres://` URL (also as a Path, which lost a slash)."""
    return str(target).startswith(("postgresql:/", "postgres:/"))


def open_store(target: str | Path, *, fast_unsafe: bool = False) -> Store:
    """The store `target` names: a PostgreSQL URL, else a SQLite file path."""
    if is_postgres(target):
        return PostgresStore(_url(target), fast_unsafe=fast_unsafe)
    return SqliteStore(Path(target), fast_unsafe=fast_unsafe)


def connect(target: str | Path, *, timeout_s: float = 10.0) -> Connection:
    """A new plain connection to the store (for another thread or process): autocommit,
    waits up to `timeout_s` for a lock."""
    if is_postgres(target):
        return PgConnection(Target.parse(_url(target)), lock_timeout_ms=int(timeout_s * 1000))
    db = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
    db.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
    return db


@contextmanager
def transaction(connection: Connection) -> Iterator[Connection]:
    """BEGIN IMMEDIATE (the one writer) … COMMIT, rolled back on any exception."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _url(target: str | Path) -> str:
    """The URL itself: a Path made of one has lost a slash, and guessing it back is unsafe."""
    if isinstance(target, Path):
        raise StoreError(f"{target}: a PostgreSQL URL must be passed as a string, not a path")
    return target
