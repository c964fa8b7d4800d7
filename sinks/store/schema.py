"""The projection's schema, defined once: the DDL (SQLite's words; PostgreSQL's is derived
from it), its version, the column order of the converged tables, and the upserts that write
them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

from runwatch.sinks.store.api import StoreError

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


def _upsert(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    names = ", ".join(columns)
    marks = ", ".join(f":{c}" for c in columns)
    updates = ", ".join(f"{c}=excluded.{c}" for c in columns if c not in key)
    return (
        f"INSERT INTO {table} ({names}) VALUES ({marks}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )


RUN_COLUMNS: Final = (
    "run_id",
    "status",
    "created_at",
    "started_at",
    "ended_at",
    "last_event_at",
    "duration_s",
    "tasks_total",
    "tasks_succeeded",
    "tasks_failed",
    "tasks_running",
    "tasks_pending",
    "tasks_skipped",
    "tasks_canceled",
    "events_total",
    "error_events",
    "stalled",
)
TASK_COLUMNS: Final = (
    "run_id",
    "task_id",
    "workstream_id",
    "status",
    "attempts",
    "started_at",
    "ended_at",
)
WORKSTREAM_COLUMNS: Final = (
    "run_id",
    "workstream_id",
    "status",
    "tasks_total",
    "tasks_succeeded",
    "tasks_failed",
    "tasks_running",
)
PATTERN_RUN_COLUMNS: Final = (
    "pattern_run_id",
    "pattern_id",
    "job_id",
    "step_id",
    "run_id",
    "status",
    "phase",
    "started_at",
    "finished_at",
    "duration_s",
    "error_message",
)

UPSERT_RUN: Final = _upsert("runs", RUN_COLUMNS, ("run_id",))
UPSERT_TASK: Final = _upsert("tasks", TASK_COLUMNS, ("run_id", "task_id"))
UPSERT_WORKSTREAM: Final = _upsert("workstreams", WORKSTREAM_COLUMNS, ("run_id", "workstream_id"))
UPSERT_PATTERN_RUN: Final = _upsert("pattern_runs", PATTERN_RUN_COLUMNS, ("pattern_run_id",))


def check_version(where: Path | str, value: str) -> None:
    """Refuse a database whose `meta.schema_version` is not this runwatch's (any backend)."""
    version = int(value)
    if version != SCHEMA_VERSION:
        newer = "newer" if version > SCHEMA_VERSION else "older"
        raise StoreError(
            f"{where}: schema version {version} is {newer} than this runwatch "
            f"supports ({SCHEMA_VERSION}); rebuild it with `runwatch replay` "
            f"or use a matching runwatch"
        )
