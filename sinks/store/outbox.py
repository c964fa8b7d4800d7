"""The dispatcher's SQL: which outbox entry is next (one dispatcher on SQLite, leases among
processors sharing PostgreSQL), how an attempt's end is recorded, and what a job adds.

Every function takes a store connection (`store.db` or one from `connect`); the writes
belong inside the caller's transaction, with the derived events that record them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from runwatch.sinks.store.api import Connection
from runwatch.sinks.store.schema import TABLES, insert


@dataclass(frozen=True, slots=True)
class Claim:
    """A due entry taken for one attempt."""

    id: str
    kind: str
    payload: bytes
    attempts: int
    token: float
    """The entry's `next_attempt_at` as claimed: for a lease, its end. Every later claim of
    the entry, by any processor, moves it (past the lease's end), so the attempt's outcome
    is written only while it still holds: a worker that lost its lease overwrites nothing."""


_ORDER = "ORDER BY next_attempt_at, decided_at, id LIMIT 1"
_RECORD_DERIVED = insert(
    TABLES["derived_events"], (*TABLES["derived_events"].inserted, "unevaluated")
)


def pending_count(connection: Connection) -> int:
    """Pending entries, due or not."""
    row = connection.execute("SELECT count(*) FROM outbox WHERE state='pending'").fetchone()
    return int(row[0])


def next_due(connection: Connection, target: str, now: float) -> Claim | None:
    """The next due entry of `target`; one dispatcher per database (SQLite's one writer)."""
    row = connection.execute(
        "SELECT id, kind, payload, attempts, next_attempt_at FROM outbox "
        f"WHERE state='pending' AND target=? AND next_attempt_at <= ? {_ORDER}",
        (target, now),
    ).fetchone()
    return _claim(row)


def lease(connection: Connection, target: str, now: float, lease_s: float) -> Claim | None:
    """Claim the next due entry of `target` among several processors sharing PostgreSQL:
    the row is locked with SKIP LOCKED (no two claim it) and leased for `lease_s`, so if this
    process dies mid-attempt another one retries it once the lease ends. The lease's end is
    the claim's token; a later lease of the entry can only start after it, so ends later."""
    row = connection.execute(
        "UPDATE outbox SET next_attempt_at = ? WHERE id = ("
        f"SELECT id FROM outbox WHERE state='pending' AND target=? AND next_attempt_at <= ? "
        f"{_ORDER} FOR UPDATE SKIP LOCKED) RETURNING id, kind, payload, attempts, next_attempt_at",
        (now + lease_s, target, now),
    ).fetchone()
    return _claim(row)


def _claim(row: Any) -> Claim | None:
    if row is None:
        return None
    return Claim(row[0], row[1], bytes(row[2]), int(row[3]), float(row[4]))


def next_attempt_at(connection: Connection, target: str) -> float | None:
    """When `target`'s earliest pending entry falls due; None when it has none."""
    row = connection.execute(
        "SELECT min(next_attempt_at) FROM outbox WHERE state='pending' AND target=?", (target,)
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


_HELD = "id=? AND state='pending' AND next_attempt_at=?"
"""The claimed entry, as long as no one claimed it since (see `Claim.token`)."""


def retry_later(connection: Connection, claim: Claim, attempts: int, at: float, error: str) -> bool:
    """The attempt failed but may succeed later: due again at `at` (a Unix time). False,
    and nothing written, when the claim was lost to another processor meanwhile."""
    cursor = connection.execute(
        f"UPDATE outbox SET attempts=?, next_attempt_at=?, last_error=? WHERE {_HELD}",
        (attempts, at, error, claim.id, claim.token),
    )
    return cursor.rowcount == 1


def settle(
    connection: Connection,
    claim: Claim,
    state: str,
    attempts: int,
    error: str | None,
    done_at: str,
) -> bool:
    """The entry is done with: `state` is delivered or failed. False, and nothing written,
    when the claim was lost to another processor meanwhile."""
    cursor = connection.execute(
        f"UPDATE outbox SET state=?, attempts=?, last_error=?, done_at=? WHERE {_HELD}",
        (state, attempts, error, done_at, claim.id, claim.token),
    )
    return cursor.rowcount == 1


def record(
    connection: Connection,
    derived: Iterable[dict[str, Any]],
    rows: Iterable[tuple[str, tuple[Any, ...]]],
    recorded_at: str,
) -> None:
    """A job's own (table, row) rows, kept when already there, and derived events that the
    alert rules have yet to see (the service evaluates them at its next commit)."""
    for table, row in rows:
        connection.execute(insert(TABLES[table], conflict="IGNORE"), row)
    connection.executemany(
        _RECORD_DERIVED,
        [
            (d["type"], d.get("run_id"), d["event_time"], orjson.dumps(d), recorded_at, 1)
            for d in derived
        ],
    )
