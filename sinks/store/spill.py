"""What a replay holds back until its input is folded, kept on disk instead of in memory.

A replay decides its alerts once, over every trigger in event-time order; held in memory,
those triggers grow with history. Here they go to a private temporary SQLite database
(deleted when closed, its page cache bounded) and come back sorted, a batch at a time.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence

from runwatch.sinks.store.api import HeldTrigger

_CACHE_KIB = 8192

_SCHEMA = (
    "CREATE TABLE triggers (seq INTEGER PRIMARY KEY, time INTEGER NOT NULL, "
    "tier INTEGER NOT NULL, sort_id TEXT NOT NULL, rule TEXT NOT NULL, "
    "role TEXT NOT NULL, event_id TEXT NOT NULL, body BLOB NOT NULL)",
    "CREATE TABLE derived (seq INTEGER PRIMARY KEY, time INTEGER NOT NULL, body BLOB NOT NULL)",
)

# The first copy of each (rule, role, event) in decision order: the same input event read
# twice (files that repeat each other, or two workers' chunks) triggers once.
_IN_ORDER = """
SELECT body FROM (
    SELECT seq, time, tier, sort_id, body, ROW_NUMBER() OVER (
        PARTITION BY rule, role, event_id ORDER BY time, tier, sort_id, seq
    ) AS copy
    FROM triggers
) WHERE copy = 1 ORDER BY time, tier, sort_id, seq
"""


class HeldOnDisk:
    """Held triggers and derived events in a temporary database (see `Holding`)."""

    def __init__(self) -> None:
        # An empty name: SQLite's private temporary file, removed when the connection closes.
        self._db = sqlite3.connect("", isolation_level=None)
        self._db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        for statement in _SCHEMA:
            self._db.execute(statement)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def hold(self, triggers: Sequence[HeldTrigger], derived: Iterable[tuple[int, bytes]]) -> None:
        db = self._db
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO triggers (time, tier, sort_id, rule, role, event_id, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            triggers,
        )
        db.executemany("INSERT INTO derived (time, body) VALUES (?, ?)", derived)
        db.execute("COMMIT")
        self._count += len(triggers)

    def triggers(self, batch: int) -> Iterator[list[bytes]]:
        cursor = self._db.execute(_IN_ORDER)
        while rows := cursor.fetchmany(batch):
            yield [body for (body,) in rows]

    def derived(self, batch: int) -> Iterator[list[bytes]]:
        cursor = self._db.execute("SELECT body FROM derived ORDER BY time, seq")
        while rows := cursor.fetchmany(batch):
            yield [body for (body,) in rows]

    def close(self) -> None:
        self._db.close()
