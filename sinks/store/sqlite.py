"""The SQLite projection store: converged rows, fold state, dead letters and checkpoints.

Delivery contract: everything one `commit` is given lands in one transaction, so a crash
at any instant leaves the rows, the dead letters and the checkpoints that cover them
consistent: nothing lost, nothing applied twice. All writes are upserts keyed by the
projection's primary keys, so writing the same state twice is harmless.
"""

from __future__ import annotations

import sqlite3
import uuid
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Final

from runwatch.sinks.store.api import Changes, Connection, StoreError, UnstorableValue
from runwatch.sinks.store.schema import (
    CONVERGED,
    SCHEMA_VERSION,
    STATEMENTS,
    TABLES,
    check_version,
    insert,
    upsert,
)
from runwatch.sinks.store.shared import RUN_CHANGE, SharedQueries, parts, transaction

_UPSERTS: Final = {field: upsert(table) for field, table in CONVERGED.items()}
_STATEMENTS: Final = {
    "states": insert(TABLES["fold_state"], conflict="REPLACE"),
    "task_states": insert(TABLES["fold_tasks"], conflict="REPLACE"),
    "index": insert(TABLES["event_index"], TABLES["event_index"].inserted),
    "stalled": "UPDATE runs SET stalled=? WHERE run_id=?",
    "dead_letters": insert(TABLES["dead_letters"], conflict="IGNORE"),
    "checkpoints": insert(TABLES["checkpoints"], conflict="REPLACE"),
    "forget": "DELETE FROM checkpoints WHERE device=? AND inode=?",
    "counters": insert(TABLES["counters"])
    + " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
    "derived": insert(TABLES["derived_events"], TABLES["derived_events"].inserted),
    "outbox": insert(TABLES["outbox"], TABLES["outbox"].inserted, conflict="IGNORE"),
    "alert_states": insert(TABLES["alert_state"], conflict="REPLACE"),
    "alert_states_deleted": "DELETE FROM alert_state WHERE rule=? AND group_key=?",
    "hastened": "UPDATE outbox SET next_attempt_at=? "
    "WHERE run_id=? AND kind='job' AND state='pending' AND next_attempt_at > ?",
    "evaluated": "UPDATE derived_events SET unevaluated=0 WHERE seq=?",
    "run_changes": RUN_CHANGE,
}
"""`parts` name → the statement that writes its rows."""


class SqliteStore(SharedQueries):
    """One projection database file. Not thread-safe: one owner, one connection."""

    def __init__(self, path: Path, *, fast_unsafe: bool = False) -> None:
        """Open or create `path`. `fast_unsafe` turns off journaling, for a scratch file
        that is thrown away unless the whole build finishes (replay)."""
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists() or path.stat().st_size == 0
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            if fresh:
                self._create(fast_unsafe)
            else:
                self._check_version()
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{path}: not a usable runwatch database ({exc}); "
                "rebuild it from the logs with `runwatch replay`"
            ) from exc
        if fast_unsafe:
            self.db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;")
        else:
            self.db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
        self.db.execute("PRAGMA busy_timeout=5000")
        self._source_ids: dict[str, int] = dict(
            self.db.execute("SELECT path, source_id FROM sources").fetchall()
        )

    def _create(self, fast_unsafe: bool) -> None:
        if not fast_unsafe:
            self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA page_size=8192")
        with self.transaction():
            for statement in STATEMENTS:
                self.db.execute(statement)
            self.db.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [("schema_version", str(SCHEMA_VERSION)), ("database_id", uuid.uuid4().hex)],
            )

    def _check_version(self) -> None:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.OperationalError:
            row = None
        if row is None:
            raise StoreError(
                f"{self.path}: not a runwatch database (no schema version); "
                "point --db at another file or rebuild with `runwatch replay`"
            )
        check_version(self.path, row[0])

    def transaction(self) -> AbstractContextManager[Connection]:
        return transaction(self.db)

    def source_id(self, path: str) -> int:
        """A small stable number for a source path, used by the event index."""
        found = self._source_ids.get(path)
        if found is None:
            cursor = self.db.execute(
                "INSERT INTO sources (path) VALUES (?) ON CONFLICT (path) DO UPDATE "
                "SET path=excluded.path RETURNING source_id",
                (path,),
            )
            found = self._source_ids[path] = int(cursor.fetchone()[0])
        return found

    def write(self, changes: Changes, seen_at: str) -> None:
        """Write inside an open transaction; stream positions first, so a lost stream
        raises OwnershipLost before anything else is written."""
        db = self.db
        for stream, expected, new in changes.positions:
            self._advance(stream, expected, new, seen_at)
        try:
            for field, statement in _UPSERTS.items():
                rows = getattr(changes, field)
                if rows:
                    db.executemany(statement, rows)
            for part, rows in parts(changes, seen_at):
                if rows:
                    db.executemany(_STATEMENTS[part], rows)
        except OverflowError as exc:  # an integer outside SQLite's signed 64 bits
            raise UnstorableValue(f"{self.path}: {exc}") from exc

    def finalize(self) -> None:
        """Leave a compact WAL-mode file behind (replay's scratch file becomes the real one)."""
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        self.db.close()
