"""The web dashboard's reads, on SQLite and PostgreSQL alike: run lists, the overview, the
change feed behind `/api/events`, alerts. Each takes a reader from `open_reader`, which can
never write; queries that must agree run in one snapshot (`snapshot`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from runwatch.sinks.store.api import Connection, StoreError
from runwatch.sinks.store.schema import RUN_COLUMNS, check_version
from runwatch.sinks.store.shared import fetch_dicts
from runwatch.sinks.store.target import Target, is_postgres

ACTIVE: Final = ("pending", "running")
_RUNS: Final = ", ".join(f"r.{c}" for c in RUN_COLUMNS)
_ALERTS: Final = (
    "id, alert_id, decided_at, rule, channel, state, attempts, run_id, last_error, "
    "event_time, done_at, payload"
)


def open_reader(target: str | Path, *, timeout_s: float = 2.0) -> Connection:
    """A connection that cannot write, to a projection of this runwatch's schema version:
    SQLite opened read-only (by a URI any file name survives), or a PostgreSQL session whose
    transactions are read-only. StoreError says what is wrong with anything else."""
    if is_postgres(target):
        import psycopg

        from runwatch.sinks.store.postgres_sql import PgConnection

        where = Target.parse(str(target))
        db: Connection = PgConnection(where, lock_timeout_ms=int(timeout_s * 1000))
        db.execute("SET default_transaction_read_only = on")
        errors: tuple[type[Exception], ...] = (psycopg.Error,)
        printable = where.printable
    else:
        path = Path(target)
        if not path.is_file():
            raise StoreError(f"{path}: no such database file")
        uri = f"file:{quote(str(path.resolve()))}?mode=ro"
        try:
            db = sqlite3.connect(
                uri, uri=True, timeout=timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open ({exc})") from exc
        errors, printable = (sqlite3.Error,), str(path)
    try:
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            raise StoreError(f"{printable}: not a runwatch database (no schema version)")
        check_version(printable, row[0])
    except errors as exc:
        db.close()
        message = " ".join(str(exc).split())
        raise StoreError(f"{printable}: not a readable runwatch database ({message})") from exc
    except StoreError:
        db.close()
        raise
    return db


@contextmanager
def snapshot(connection: Connection) -> Iterator[Connection]:
    """Every read inside sees the same committed state (SQLite: one read transaction;
    PostgreSQL: REPEATABLE READ)."""
    connection.execute("BEGIN")
    try:
        yield connection
    finally:
        connection.execute("COMMIT")


def change_seq(connection: Connection) -> int:
    """The newest change number (0 when no run was ever written)."""
    row = connection.execute("SELECT max(seq) FROM run_changes").fetchone()
    return int(row[0] or 0)


def changes_after(connection: Connection, seq: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
    """(change number, run row) of the runs changed after `seq`, oldest change first. A run
    changed several times since shows once, as it is now, under its latest number."""
    rows = fetch_dicts(
        connection,
        f"SELECT c.seq AS change_seq, {_RUNS} FROM run_changes c JOIN runs r "
        "ON r.run_id = c.run_id WHERE c.seq > ? ORDER BY c.seq LIMIT ?",
        (seq, limit),
    )
    return [(int(row.pop("change_seq")), row) for row in rows]


def run_page(
    connection: Connection,
    *,
    status: str | None,
    name: str | None,
    limit: int,
    before: str | None,
) -> list[dict[str, Any]]:
    """Runs newest last event first: only `status` (a status, `active`, or `stalled`), only
    run ids containing `name` (any case), only last events before `before`."""
    where: list[str] = []
    params: list[object] = []
    if status == "active":
        where.append("status IN ('pending', 'running')")
    elif status == "stalled":
        where.append("stalled = 1")
    elif status:
        where.append("status = ?")
        params.append(status)
    if name:
        escaped = name.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append("lower(run_id) LIKE ? ESCAPE '\\'")
        params.append(f"%{escaped}%")
    if before:
        where.append("last_event_at < ?")
        params.append(before)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    return fetch_dicts(
        connection,
        f"SELECT {', '.join(RUN_COLUMNS)} FROM runs {clause}"
        "ORDER BY last_event_at DESC, run_id LIMIT ?",
        [*params, limit],
    )


def overview(connection: Connection, *, active: int, recent: int) -> dict[str, Any]:
    """The front page: runs by status, stalled count, active runs (stalled first), recent
    completions and recent notifications (one per alert, its channels' states joined)."""
    counts = {
        str(status): int(n)
        for status, n in connection.execute(
            "SELECT status, count(*) FROM runs GROUP BY status ORDER BY status"
        )
    }
    stalled = connection.execute("SELECT count(*) FROM runs WHERE stalled = 1").fetchone()[0]
    return {
        "counts": counts,
        "stalled": int(stalled or 0),
        "active": fetch_dicts(
            connection,
            f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE status IN ('pending', 'running') "
            "ORDER BY stalled DESC, last_event_at DESC, run_id LIMIT ?",
            (active,),
        ),
        "completed": fetch_dicts(
            connection,
            f"SELECT {', '.join(RUN_COLUMNS)} FROM runs "
            "WHERE status NOT IN ('pending', 'running') AND ended_at IS NOT NULL "
            "ORDER BY ended_at DESC, run_id LIMIT ?",
            (recent,),
        ),
        "alerts": alert_page(connection, limit=recent),
        "events_accepted": events_accepted(connection),
    }


def alert_page(
    connection: Connection, *, limit: int, state: str | None = None, run_id: str | None = None
) -> list[dict[str, Any]]:
    """Notifications, one row per channel, newest decision first."""
    where, params = [], []
    for column, value in (("state", state), ("run_id", run_id)):
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    return fetch_dicts(
        connection,
        f"SELECT {_ALERTS} FROM alerts {clause}ORDER BY decided_at DESC, id LIMIT ?",
        [*params, limit],
    )


def events_accepted(connection: Connection) -> int:
    row = connection.execute("SELECT value FROM counters WHERE name = 'events_accepted'").fetchone()
    return int(row[0]) if row else 0


def task_history(connection: Connection, task_id: str, limit: int) -> list[dict[str, Any]]:
    """One task id across runs, newest start first: how long it took each time."""
    return fetch_dicts(
        connection,
        "SELECT t.run_id, t.task_id, t.workstream_id, t.status, t.attempts, t.started_at, "
        "t.ended_at, r.status AS run_status FROM tasks t JOIN runs r ON r.run_id = t.run_id "
        "WHERE t.task_id = ? ORDER BY t.started_at DESC, t.run_id LIMIT ?",
        (task_id, limit),
    )
