"""The SQLite projection store: converged rows, fold state, dead letters and checkpoints.

Delivery contract: everything one `commit` is given lands in one transaction, so a crash
at any instant leaves the rows, the dead letters and the checkpoints that cover them
consistent: nothing lost, nothing applied twice. All writes are upserts keyed by the
projection's primary keys, so writing the same state twice is harmless.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

SCHEMA_VERSION: Final = 3

SCHEMA: Final = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY, status TEXT NOT NULL,
    created_at TEXT, started_at TEXT, ended_at TEXT, last_event_at TEXT, duration_s REAL,
    tasks_total INTEGER NOT NULL, tasks_succeeded INTEGER NOT NULL, tasks_failed INTEGER NOT NULL,
    tasks_running INTEGER NOT NULL, tasks_pending INTEGER NOT NULL,
    tasks_skipped INTEGER NOT NULL, tasks_canceled INTEGER NOT NULL,
    events_total INTEGER NOT NULL, error_events INTEGER NOT NULL, stalled INTEGER NOT NULL
);
CREATE INDEX runs_status ON runs (status);
CREATE TABLE tasks (
    run_id TEXT NOT NULL, task_id TEXT NOT NULL, workstream_id TEXT, status TEXT NOT NULL,
    attempts INTEGER NOT NULL, started_at TEXT, ended_at TEXT,
    PRIMARY KEY (run_id, task_id)
) WITHOUT ROWID;
CREATE TABLE workstreams (
    run_id TEXT NOT NULL, workstream_id TEXT NOT NULL, status TEXT NOT NULL,
    tasks_total INTEGER NOT NULL, tasks_succeeded INTEGER NOT NULL,
    tasks_failed INTEGER NOT NULL, tasks_running INTEGER NOT NULL,
    PRIMARY KEY (run_id, workstream_id)
) WITHOUT ROWID;
CREATE TABLE pattern_runs (
    pattern_run_id TEXT PRIMARY KEY, pattern_id TEXT, job_id TEXT, step_id TEXT, run_id TEXT,
    status TEXT NOT NULL, phase TEXT, started_at TEXT, finished_at TEXT, duration_s REAL,
    error_message TEXT
);
CREATE TABLE dead_letters (
    source TEXT NOT NULL, offset INTEGER NOT NULL, line INTEGER NOT NULL,
    reason TEXT NOT NULL, detail TEXT NOT NULL, raw BLOB NOT NULL, raw_size INTEGER NOT NULL,
    seen_at TEXT NOT NULL,
    PRIMARY KEY (source, offset)
);
CREATE TABLE checkpoints (
    device INTEGER NOT NULL, inode INTEGER NOT NULL, source TEXT NOT NULL,
    fingerprint TEXT NOT NULL, offset INTEGER NOT NULL, line INTEGER NOT NULL,
    tail_hash TEXT NOT NULL, updated_at TEXT NOT NULL,
    PRIMARY KEY (device, inode)
);
CREATE TABLE sources (source_id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE);
CREATE TABLE fold_state (group_key TEXT PRIMARY KEY, state BLOB NOT NULL);
CREATE TABLE event_index (
    seq INTEGER PRIMARY KEY, group_key TEXT NOT NULL, entries BLOB NOT NULL
);
CREATE INDEX event_index_group ON event_index (group_key);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE derived_events (
    seq INTEGER PRIMARY KEY, type TEXT NOT NULL, run_id TEXT, event_time TEXT,
    data BLOB NOT NULL, recorded_at TEXT NOT NULL, unevaluated INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX derived_unevaluated ON derived_events (seq) WHERE unevaluated = 1;
CREATE TABLE outbox (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, target TEXT NOT NULL, alert_id TEXT,
    rule TEXT, run_id TEXT, state TEXT NOT NULL, payload BLOB NOT NULL, event_time TEXT,
    decided_at TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0, last_error TEXT, done_at TEXT
);
CREATE INDEX outbox_due ON outbox (target, next_attempt_at) WHERE state = 'pending';
CREATE INDEX outbox_recent ON outbox (decided_at);
CREATE VIEW alerts AS
    SELECT id, alert_id, rule, target AS channel, run_id, state, attempts, last_error,
           event_time, decided_at, done_at, payload
    FROM outbox WHERE kind = 'alert';
CREATE TABLE alert_state (
    rule TEXT NOT NULL, group_key TEXT NOT NULL, state BLOB NOT NULL,
    PRIMARY KEY (rule, group_key)
) WITHOUT ROWID;
CREATE TABLE archival_log (
    run_id TEXT NOT NULL, archive_path TEXT NOT NULL, sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL, members INTEGER NOT NULL, archived_at TEXT NOT NULL,
    PRIMARY KEY (run_id, archive_path)
);
CREATE TABLE stream_positions (
    stream TEXT PRIMARY KEY, position INTEGER NOT NULL, owner TEXT, updated_at TEXT
);
"""

SNAPSHOT: Final = {
    "runs": ("run_id", "*"),
    "tasks": ("run_id, task_id", "*"),
    "workstreams": ("run_id, workstream_id", "*"),
    "pattern_runs": ("pattern_run_id", "*"),
    "dead_letters": ("source, offset", "source, offset, line, reason, detail, raw, raw_size"),
}
"""The converged tables a rebuild reproduces row for row (order, columns): the wall-clock
`seen_at` of dead letters is left out."""


class StoreError(Exception):
    """A database that cannot be used as it is; the message says what to do."""


class OwnershipLost(StoreError):
    """A stream position moved under us: another process owns the stream, so this one stops
    before it writes anything (its whole transaction is rolled back)."""

    def __init__(self, stream: str, expected: int | None, found: int | None,
                 owner: str | None) -> None:
        self.stream, self.expected, self.found, self.owner = stream, expected, found, owner
        was = "no position" if expected is None else f"position {expected}"
        now = "none" if found is None else str(found)
        by = f", written by {owner}" if owner else ""
        super().__init__(
            f"another process owns stream {stream!r} (expected {was}, found {now}{by}); "
            "this one stops to avoid corrupting the projection")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far one file has been committed, and how to recognise it again: the file is its
    (device, inode); `fingerprint` hashes its first bytes (inode reuse shows as a mismatch)
    and `tail_hash` the bytes before `offset` (a rewrite shows as a mismatch)."""

    device: int
    inode: int
    source: str
    fingerprint: str
    offset: int
    line: int
    tail_hash: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected line: where it was, why, and its bytes (the first 64 KiB)."""

    source: str
    offset: int
    line: int
    reason: str
    detail: str
    raw: bytes
    raw_size: int


@dataclass(slots=True)
class Changes:
    """Everything one transaction writes."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    workstreams: list[dict[str, Any]] = field(default_factory=list)
    pattern_runs: list[dict[str, Any]] = field(default_factory=list)
    states: list[tuple[str, bytes]] = field(default_factory=list)
    index: list[tuple[str, bytes]] = field(default_factory=list)
    stalled: list[tuple[int, str]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    forget: list[tuple[int, int]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    derived: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[OutboxEntry] = field(default_factory=list)
    alert_states: list[tuple[str, str, bytes]] = field(default_factory=list)
    evaluated: list[int] = field(default_factory=list)
    positions: list[tuple[str, int | None, int]] = field(default_factory=list)
    """(stream, expected position or None when never seen, new position): compare-and-set."""

    def __bool__(self) -> bool:
        return any((self.runs, self.tasks, self.workstreams, self.pattern_runs, self.states,
                    self.index, self.stalled, self.dead_letters, self.checkpoints, self.forget,
                    self.counters, self.derived, self.outbox, self.alert_states,
                    self.evaluated, self.positions))


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One external effect to carry out: an alert to one channel, or a job (report, archive).
    `id` is stable, so recording it twice is harmless and receivers can drop repeats."""

    id: str
    kind: str
    target: str
    state: str
    payload: dict[str, Any]
    run_id: str | None = None
    alert_id: str | None = None
    rule: str | None = None
    event_time: str | None = None


def _upsert(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    names = ", ".join(columns)
    marks = ", ".join(f":{c}" for c in columns)
    updates = ", ".join(f"{c}=excluded.{c}" for c in columns if c not in key)
    return (f"INSERT INTO {table} ({names}) VALUES ({marks}) "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}")


RUN_COLUMNS: Final = (
    "run_id", "status", "created_at", "started_at", "ended_at", "last_event_at", "duration_s",
    "tasks_total", "tasks_succeeded", "tasks_failed", "tasks_running", "tasks_pending",
    "tasks_skipped", "tasks_canceled", "events_total", "error_events", "stalled",
)
TASK_COLUMNS: Final = ("run_id", "task_id", "workstream_id", "status", "attempts", "started_at",
                       "ended_at")
WORKSTREAM_COLUMNS: Final = ("run_id", "workstream_id", "status", "tasks_total",
                             "tasks_succeeded", "tasks_failed", "tasks_running")
PATTERN_RUN_COLUMNS: Final = ("pattern_run_id", "pattern_id", "job_id", "step_id", "run_id",
                              "status", "phase", "started_at", "finished_at", "duration_s",
                              "error_message")

_UPSERT_RUN: Final = _upsert("runs", RUN_COLUMNS, ("run_id",))
_UPSERT_TASK: Final = _upsert("tasks", TASK_COLUMNS, ("run_id", "task_id"))
_UPSERT_WORKSTREAM: Final = _upsert("workstreams", WORKSTREAM_COLUMNS,
                                    ("run_id", "workstream_id"))
_UPSERT_PATTERN_RUN: Final = _upsert("pattern_runs", PATTERN_RUN_COLUMNS, ("pattern_run_id",))


def fetch_dicts(db: Any, sql: str, params: Sequence[object] = ()) -> list[dict[str, Any]]:
    """Rows as dicts keyed by column name, from any store connection (`?` parameters)."""
    cursor = db.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


def run_detail(db: Any, run_id: str) -> dict[str, Any] | None:
    """A run's row with its tasks, workstreams and pattern runs; None if there is no run."""
    found = fetch_dicts(db, "SELECT * FROM runs WHERE run_id=?", (run_id,))
    if not found:
        return None
    return {
        "run": found[0],
        "tasks": fetch_dicts(db, "SELECT * FROM tasks WHERE run_id=? ORDER BY task_id",
                             (run_id,)),
        "workstreams": fetch_dicts(db, "SELECT * FROM workstreams WHERE run_id=? "
                                   "ORDER BY workstream_id", (run_id,)),
        "pattern_runs": fetch_dicts(db, "SELECT * FROM pattern_runs WHERE run_id=? "
                                    "ORDER BY started_at, pattern_run_id", (run_id,)),
    }


class SharedQueries:
    """What both stores do the same way, in SQL their `db` connections both take (`?`
    parameters; PostgreSQL's connection rewrites them): the reads, the metadata and the
    compare-and-set of stream positions. Each store brings `db`, `transaction` and `write`."""

    db: Any

    def transaction(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def write(self, changes: Changes, seen_at: str) -> None:
        raise NotImplementedError

    def commit(self, changes: Changes, seen_at: str) -> None:
        """Write one batch atomically (the whole delivery contract lives here)."""
        with self.transaction():
            self.write(changes, seen_at)

    def _advance(self, stream: str, expected: int | None, new: int, seen_at: str) -> None:
        """Compare-and-set one stream position; no matching row means another owner."""
        if expected is None:
            cursor = self.db.execute(
                "INSERT INTO stream_positions VALUES (?, ?, ?, ?) ON CONFLICT (stream) DO NOTHING",
                (stream, new, owner_name(), seen_at))
        else:
            cursor = self.db.execute(
                "UPDATE stream_positions SET position=?, owner=?, updated_at=? "
                "WHERE stream=? AND position=?", (new, owner_name(), seen_at, stream, expected))
        if cursor.rowcount != 1:
            row = self.db.execute("SELECT position, owner FROM stream_positions WHERE stream=?",
                                  (stream,)).fetchone()
            raise OwnershipLost(stream, expected, *(row or (None, None)))

    def position(self, stream: str) -> int | None:
        """The committed position of a stream, or None if no process has claimed it yet."""
        row = self.db.execute("SELECT position FROM stream_positions WHERE stream=?",
                              (stream,)).fetchone()
        return None if row is None else int(row[0])

    def load_group(self, group_key: str) -> tuple[dict[str, Any] | None, set[str]]:
        """A group's saved fold state and the ids of the events already folded into it."""
        row = self.db.execute("SELECT state FROM fold_state WHERE group_key=?",
                              (group_key,)).fetchone()
        if row is None:
            return None, set()
        seen: set[str] = set()
        for (entries,) in self.db.execute(
                "SELECT entries FROM event_index WHERE group_key=?", (group_key,)):
            seen.update(entry[0] for entry in orjson.loads(entries))
        return orjson.loads(row[0]), seen

    def open_runs(self) -> Iterator[tuple[str, str, int]]:
        """(run_id, last_event_at, stalled) of every run that is not terminal."""
        return iter(self.db.execute(
            "SELECT run_id, last_event_at, stalled FROM runs "
            "WHERE status IN ('pending', 'running')").fetchall())

    def checkpoints(self) -> dict[tuple[int, int], Checkpoint]:
        """Every checkpoint, keyed by the file's (device, inode)."""
        rows = self.db.execute(
            "SELECT device, inode, source, fingerprint, offset, line, tail_hash "
            "FROM checkpoints").fetchall()
        return {(r[0], r[1]): Checkpoint(*r) for r in rows}

    def alert_states(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """Every stored (rule, group, state) of the alert book."""
        for rule, group, blob in self.db.execute("SELECT * FROM alert_state").fetchall():
            yield rule, group, orjson.loads(blob)

    def unevaluated(self) -> list[tuple[int, dict[str, Any]]]:
        """Derived events recorded outside the fold (by deliveries and jobs) that alert rules
        have not seen yet."""
        return [(seq, orjson.loads(data)) for seq, data in self.db.execute(
            "SELECT seq, data FROM derived_events WHERE unevaluated=1 ORDER BY seq")]

    def counters(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT name, value FROM counters").fetchall())

    def set_meta(self, items: Iterable[tuple[str, str]]) -> None:
        with self.transaction():
            self.db.executemany("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) "
                               "DO UPDATE SET value=excluded.value", list(items))

    def meta(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT key, value FROM meta").fetchall())

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Every converged row, in key order: equal snapshots mean equal projections."""
        out = {}
        for table, (order, columns) in SNAPSHOT.items():
            out[table] = fetch_dicts(self.db, f"SELECT {columns} FROM {table} ORDER BY {order}")
        return out


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
            raise StoreError(f"{path}: not a usable runwatch database ({exc}); "
                             "rebuild it from the logs with `runwatch replay`") from exc
        if fast_unsafe:
            self.db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;")
        else:
            self.db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
        self.db.execute("PRAGMA busy_timeout=5000")
        self._source_ids: dict[str, int] = dict(
            self.db.execute("SELECT path, source_id FROM sources").fetchall())

    def _create(self, fast_unsafe: bool) -> None:
        if not fast_unsafe:
            self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA page_size=8192")
        with self.transaction():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            self.db.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("schema_version", str(SCHEMA_VERSION)), ("database_id", uuid.uuid4().hex)])

    def _check_version(self) -> None:
        try:
            row = self.db.execute(
                "SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.OperationalError:
            row = None
        if row is None:
            raise StoreError(f"{self.path}: not a runwatch database (no schema version); "
                             "point --db at another file or rebuild with `runwatch replay`")
        check_version(self.path, row[0])

    def transaction(self) -> Transaction:
        return Transaction(self.db)

    def source_id(self, path: str) -> int:
        """A small stable number for a source path, used by the event index."""
        found = self._source_ids.get(path)
        if found is None:
            cursor = self.db.execute(
                "INSERT INTO sources (path) VALUES (?) ON CONFLICT (path) DO UPDATE "
                "SET path=excluded.path RETURNING source_id", (path,))
            found = self._source_ids[path] = int(cursor.fetchone()[0])
        return found

    def write(self, changes: Changes, seen_at: str) -> None:
        """Write inside an open transaction; stream positions first, so a lost stream
        raises OwnershipLost before anything else is written."""
        db = self.db
        for stream, expected, new in changes.positions:
            self._advance(stream, expected, new, seen_at)
        if changes.runs:
            db.executemany(_UPSERT_RUN, changes.runs)
        if changes.tasks:
            db.executemany(_UPSERT_TASK, changes.tasks)
        if changes.workstreams:
            db.executemany(_UPSERT_WORKSTREAM, changes.workstreams)
        if changes.pattern_runs:
            db.executemany(_UPSERT_PATTERN_RUN, changes.pattern_runs)
        if changes.states:
            db.executemany("INSERT OR REPLACE INTO fold_state VALUES (?, ?)", changes.states)
        if changes.index:
            db.executemany("INSERT INTO event_index (group_key, entries) VALUES (?, ?)",
                           changes.index)
        if changes.stalled:
            db.executemany("UPDATE runs SET stalled=? WHERE run_id=?", changes.stalled)
        if changes.dead_letters:
            db.executemany(
                "INSERT OR IGNORE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(d.source, d.offset, d.line, d.reason, d.detail, d.raw, d.raw_size, seen_at)
                 for d in changes.dead_letters])
        if changes.checkpoints:
            db.executemany(
                "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(c.device, c.inode, c.source, c.fingerprint, c.offset, c.line, c.tail_hash,
                  seen_at) for c in changes.checkpoints])
        if changes.forget:
            db.executemany("DELETE FROM checkpoints WHERE device=? AND inode=?", changes.forget)
        if changes.counters:
            db.executemany(
                "INSERT INTO counters VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                sorted(changes.counters.items()))
        if changes.derived:
            db.executemany(
                "INSERT INTO derived_events (type, run_id, event_time, data, recorded_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(d["type"], d.get("run_id"), d["event_time"], orjson.dumps(d), seen_at)
                 for d in changes.derived])
        if changes.outbox:
            db.executemany(
                "INSERT OR IGNORE INTO outbox (id, kind, target, alert_id, rule, run_id, state, "
                "payload, event_time, decided_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(o.id, o.kind, o.target, o.alert_id, o.rule, o.run_id, o.state,
                  orjson.dumps(o.payload), o.event_time, seen_at) for o in changes.outbox])
        if changes.alert_states:
            db.executemany("INSERT OR REPLACE INTO alert_state VALUES (?, ?, ?)",
                           changes.alert_states)
        if changes.evaluated:
            db.executemany("UPDATE derived_events SET unevaluated=0 WHERE seq=?",
                           [(seq,) for seq in changes.evaluated])

    def finalize(self) -> None:
        """Leave a compact WAL-mode file behind (replay's scratch file becomes the real one)."""
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        self.db.close()


class Transaction:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def check_version(where: Path | str, value: str) -> None:
    """Refuse a database whose `meta.schema_version` is not this runwatch's (any backend)."""
    version = int(value)
    if version != SCHEMA_VERSION:
        newer = "newer" if version > SCHEMA_VERSION else "older"
        raise StoreError(
            f"{where}: schema version {version} is {newer} than this runwatch "
            f"supports ({SCHEMA_VERSION}); rebuild it with `runwatch replay` "
            f"or use a matching runwatch")


def owner_name() -> str:
    """Who writes a stream position: host and pid (read at each write, so a fork shows)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def fsync_path(path: Path) -> None:
    """Make a file's (or a directory's) contents durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
