"""What would grow with history in memory, kept on disk instead: each in a private temporary
SQLite database (deleted when closed, its page cache bounded).

A replay decides its alerts once, over every trigger in event-time order; those triggers go
to `HeldOnDisk` and come back sorted, a batch at a time. A giant run's finished tasks go to
`TasksOnDisk` and come back one by one, when an event of one turns up again.
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


class TasksOnDisk:
    """Finished tasks of big runs out of memory, each under the part number of the run's
    state in memory that retired it (see `stream.core.retire`): until an event of one comes
    back, or that state is dropped."""

    def __init__(self) -> None:
        self._db = sqlite3.connect("", isolation_level=None)
        self._db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE tasks (part INTEGER NOT NULL, task_id TEXT NOT NULL, "
            "ended INTEGER NOT NULL, state BLOB NOT NULL, PRIMARY KEY (part, task_id)) "
            "WITHOUT ROWID"
        )
        # `latest_end` follows each task that comes back with the latest end: a scan would
        # make a run of late events quadratic.
        self._db.execute("CREATE INDEX tasks_end ON tasks (part, ended)")

    def put(self, part: int, rows: Iterable[tuple[str, int, bytes]]) -> None:
        """Keep (task id, end, saved state) rows of tasks not kept under `part` now. Rows in
        task id order go in about three times as fast as in a random one."""
        db = self._db
        db.execute("BEGIN")
        db.executemany(f"INSERT INTO tasks VALUES ({part:d}, ?, ?, ?)", rows)
        db.execute("COMMIT")

    def take(self, part: int, task_id: str) -> tuple[bytes, int] | None:
        """The saved state and end of a task, which leaves the disk (None: not kept)."""
        rows = self._db.execute(
            "DELETE FROM tasks WHERE part=? AND task_id=? RETURNING state, ended",
            (part, task_id),
        ).fetchall()
        return (bytes(rows[0][0]), rows[0][1]) if rows else None

    def latest_end(self, part: int) -> int | None:
        row = self._db.execute("SELECT max(ended) FROM tasks WHERE part=?", (part,)).fetchone()
        return None if row is None else row[0]

    def task_ids(self, part: int) -> Iterator[str]:
        for (task_id,) in self._db.execute("SELECT task_id FROM tasks WHERE part=?", (part,)):
            yield task_id

    def drop(self, parts: Iterable[int]) -> None:
        self._db.executemany("DELETE FROM tasks WHERE part=?", ((p,) for p in parts))

    def close(self) -> None:
        self._db.close()
