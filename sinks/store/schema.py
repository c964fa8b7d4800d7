"""The projection's schema, defined once as table specs: the DDL (SQLite's words; PostgreSQL's
is derived from it), its version, the column order of every table, and the statements that
write them are all generated from `TABLES`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from runwatch.sinks.store.api import StoreError

SCHEMA_VERSION: Final = 5


@dataclass(frozen=True, slots=True)
class Column:
    """One column in SQLite's terms. `inserted`: the statement that creates the row sets it
    (False for an identity key, a default, or a value written later)."""

    name: str
    type: str
    """SQLite's: TEXT, INTEGER, REAL or BLOB."""
    required: bool = False
    default: str | None = None
    unique: bool = False
    inserted: bool = True

    def ddl(self, primary: bool) -> str:
        words = [self.name, self.type]
        words += ["PRIMARY KEY"] if primary else []
        words += ["NOT NULL"] if self.required else []
        words += ["UNIQUE"] if self.unique else []
        words += [f"DEFAULT {self.default}"] if self.default is not None else []
        return " ".join(words)


@dataclass(frozen=True, slots=True)
class Table:
    """A table: its columns in order and its primary key (a one-column key is written inline,
    so `INTEGER PRIMARY KEY` stays SQLite's rowid alias and PostgreSQL's identity)."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    without_rowid: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def inserted(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.inserted)

    def ddl(self) -> str:
        inline = len(self.key) == 1
        parts = [c.ddl(inline and c.name == self.key[0]) for c in self.columns]
        if not inline:
            parts.append(f"PRIMARY KEY ({', '.join(self.key)})")
        tail = " WITHOUT ROWID" if self.without_rowid else ""
        return f"CREATE TABLE {self.name} (\n    " + ",\n    ".join(parts) + f"\n){tail}"


def _cols(spec: str, **flags: dict[str, Any]) -> tuple[Column, ...]:
    """`"name TYPE, name TYPE!"` (`!`: NOT NULL); `flags[name]` adds Column fields."""
    out = []
    for item in spec.split(","):
        name, kind = item.split()
        out.append(
            Column(name, kind.rstrip("!"), required=kind.endswith("!"), **flags.get(name, {}))
        )
    return tuple(out)


_LATER: Final = {"inserted": False}
_TABLES: Final = (
    Table("meta", _cols("key TEXT, value TEXT!"), ("key",)),
    Table(
        "runs",
        _cols(
            "run_id TEXT, status TEXT!, created_at TEXT, started_at TEXT, ended_at TEXT, "
            "last_event_at TEXT, duration_s REAL, tasks_total INTEGER!, tasks_succeeded INTEGER!, "
            "tasks_failed INTEGER!, tasks_running INTEGER!, tasks_pending INTEGER!, "
            "tasks_skipped INTEGER!, tasks_canceled INTEGER!, events_total INTEGER!, "
            "error_events INTEGER!, stalled INTEGER!"
        ),
        ("run_id",),
    ),
    Table(
        "tasks",
        _cols(
            "run_id TEXT!, task_id TEXT!, workstream_id TEXT, status TEXT!, attempts INTEGER!, "
            "started_at TEXT, ended_at TEXT"
        ),
        ("run_id", "task_id"),
        without_rowid=True,
    ),
    Table(
        "workstreams",
        _cols(
            "run_id TEXT!, workstream_id TEXT!, status TEXT!, tasks_total INTEGER!, "
            "tasks_succeeded INTEGER!, tasks_failed INTEGER!, tasks_running INTEGER!"
        ),
        ("run_id", "workstream_id"),
        without_rowid=True,
    ),
    Table(
        "pattern_runs",
        _cols(
            "pattern_run_id TEXT, pattern_id TEXT, job_id TEXT, step_id TEXT, run_id TEXT, "
            "status TEXT!, phase TEXT, started_at TEXT, finished_at TEXT, duration_s REAL, "
            "error_message TEXT"
        ),
        ("pattern_run_id",),
    ),
    Table(
        "dead_letters",
        _cols(
            "source TEXT!, offset INTEGER!, line INTEGER!, reason TEXT!, detail TEXT!, "
            "raw BLOB!, raw_size INTEGER!, seen_at TEXT!"
        ),
        ("source", "offset"),
    ),
    Table(
        "checkpoints",
        _cols(
            "device INTEGER!, inode INTEGER!, source TEXT!, fingerprint TEXT!, offset INTEGER!, "
            "line INTEGER!, tail_hash TEXT!, updated_at TEXT!"
        ),
        ("device", "inode"),
    ),
    Table(
        "sources",
        _cols("source_id INTEGER, path TEXT!", source_id=_LATER, path={"unique": True}),
        ("source_id",),
    ),
    Table("fold_state", _cols("group_key TEXT, state BLOB!"), ("group_key",)),
    Table(
        "fold_tasks",
        _cols("group_key TEXT!, task_id TEXT!, state BLOB!"),
        ("group_key", "task_id"),
        without_rowid=True,
    ),
    Table(
        "event_index",
        _cols("seq INTEGER, group_key TEXT!, entries BLOB!", seq=_LATER),
        ("seq",),
    ),
    Table("counters", _cols("name TEXT, value INTEGER!"), ("name",)),
    Table(
        "derived_events",
        _cols(
            "seq INTEGER, type TEXT!, run_id TEXT, event_time TEXT, data BLOB!, recorded_at TEXT!, "
            "unevaluated INTEGER!",
            seq=_LATER,
            unevaluated={"default": "0", "inserted": False},
        ),
        ("seq",),
    ),
    Table(
        "outbox",
        _cols(
            "id TEXT, kind TEXT!, target TEXT!, alert_id TEXT, rule TEXT, run_id TEXT, "
            "state TEXT!, payload BLOB!, event_time TEXT, decided_at TEXT!, attempts INTEGER!, "
            "next_attempt_at REAL!, last_error TEXT, done_at TEXT",
            attempts={"default": "0", "inserted": False},
            next_attempt_at={"default": "0"},
            last_error=_LATER,
            done_at=_LATER,
        ),
        ("id",),
    ),
    Table(
        "alert_state",
        _cols("rule TEXT!, group_key TEXT!, state BLOB!"),
        ("rule", "group_key"),
        without_rowid=True,
    ),
    Table(
        "archival_log",
        _cols(
            "run_id TEXT!, archive_path TEXT!, sha256 TEXT!, size_bytes INTEGER!, "
            "members INTEGER!, archived_at TEXT!"
        ),
        ("run_id", "archive_path"),
    ),
    Table(
        "archival_late",
        _cols(
            "run_id TEXT!, event_id TEXT!, archive_path TEXT!, event_type TEXT!, "
            "event_time TEXT, noted_at TEXT!"
        ),
        ("run_id", "event_id"),
    ),
    Table("run_changes", _cols("run_id TEXT, seq INTEGER!", seq={"unique": True}), ("run_id",)),
    Table(
        "stream_positions",
        _cols("stream TEXT, position INTEGER!, owner TEXT, updated_at TEXT"),
        ("stream",),
    ),
)
TABLES: Final = {table.name: table for table in _TABLES}

_EXTRAS: Final = (
    "CREATE INDEX runs_status ON runs (status)",
    "CREATE INDEX runs_recent ON runs (last_event_at DESC, run_id)",
    "CREATE INDEX event_index_group ON event_index (group_key)",
    "CREATE INDEX derived_unevaluated ON derived_events (seq) WHERE unevaluated = 1",
    "CREATE INDEX outbox_due ON outbox (target, next_attempt_at) WHERE state = 'pending'",
    "CREATE INDEX outbox_recent ON outbox (decided_at)",
    """CREATE VIEW alerts AS
    SELECT id, alert_id, rule, target AS channel, run_id, state, attempts, last_error,
           event_time, decided_at, done_at, payload
    FROM outbox WHERE kind = 'alert'""",
)
"""Indexes and the `alerts` view, which name the tables' columns."""

STATEMENTS: Final = (*(table.ddl() for table in _TABLES), *_EXTRAS)
"""The whole schema in SQLite's words, one statement each."""

SNAPSHOT: Final = {
    "runs": ("run_id", "*"),
    "tasks": ("run_id, task_id", "*"),
    "workstreams": ("run_id, workstream_id", "*"),
    "pattern_runs": ("pattern_run_id", "*"),
    "dead_letters": ("source, offset", "source, offset, line, reason, detail, raw, raw_size"),
}
"""The converged tables a rebuild reproduces row for row (order, columns): the wall-clock
`seen_at` of dead letters is left out."""

RUN_COLUMNS: Final = TABLES["runs"].names
CONVERGED: Final = {
    "runs": TABLES["runs"],
    "tasks": TABLES["tasks"],
    "workstreams": TABLES["workstreams"],
    "pattern_runs": TABLES["pattern_runs"],
}
"""`Changes` field → the table its row dicts upsert into (every column, by name)."""


def upsert(table: Table) -> str:
    """Insert or update whole rows given as dicts (`:name` parameters), keyed by the key."""
    names = ", ".join(table.names)
    marks = ", ".join(f":{c}" for c in table.names)
    updates = ", ".join(f"{c}=excluded.{c}" for c in table.names if c not in table.key)
    return (
        f"INSERT INTO {table.name} ({names}) VALUES ({marks}) "
        f"ON CONFLICT ({', '.join(table.key)}) DO UPDATE SET {updates}"
    )


def insert(table: Table, columns: Sequence[str] | None = None, *, conflict: str = "") -> str:
    """SQLite's INSERT of `columns` (default: all) with `?` parameters; `conflict` is
    "IGNORE" or "REPLACE" for `INSERT OR …`."""
    names = table.names if columns is None else tuple(columns)
    unknown = set(names) - set(table.names)
    if unknown:
        raise ValueError(f"{table.name} has no column(s) {sorted(unknown)}")
    verb = f"INSERT OR {conflict}" if conflict else "INSERT"
    marks = ", ".join("?" for _ in names)
    return f"{verb} INTO {table.name} ({', '.join(names)}) VALUES ({marks})"


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
