"""The reads the commands and jobs make of a projection: run lists and details, alerts, the
live view's frame, replay's totals and the health probe. Each takes a store connection
(`store.db` or one from `connect`) unless it opens the database itself, read-only."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import orjson

from runwatch.sinks.store.api import Connection, StoreError
from runwatch.sinks.store.keys import GroupKey, IndexEntry, load_index
from runwatch.sinks.store.schema import RUN_COLUMNS
from runwatch.sinks.store.shared import fetch_dicts, iter_dicts
from runwatch.sinks.store.slo_reads import finished_runs

ALERT_COLUMNS: Final = (
    "decided_at",
    "rule",
    "channel",
    "state",
    "attempts",
    "run_id",
    "last_error",
    "payload",
)


def _runs_query(status: str | None, limit: int | None) -> tuple[str, list[object]]:
    """The SQL and parameters of `runs`."""
    where = "WHERE status = ?" if status else ""
    params: list[object] = [status] if status else []
    if limit is not None:
        params.append(limit)
    sql = (
        f"SELECT {', '.join(RUN_COLUMNS)} FROM runs {where} "
        "ORDER BY last_event_at DESC, run_id" + ("" if limit is None else " LIMIT ?")
    )
    return sql, params


def runs(
    connection: Connection, *, status: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Runs (every column), the latest event first; only `status` when given."""
    return fetch_dicts(connection, *_runs_query(status, limit))


def run_detail(connection: Connection, run_id: str) -> dict[str, Any] | None:
    """A run's row with its tasks, workstreams and pattern runs; None if there is no run."""
    found = fetch_dicts(connection, "SELECT * FROM runs WHERE run_id=?", (run_id,))
    if not found:
        return None
    return {
        "run": found[0],
        "tasks": fetch_dicts(
            connection, "SELECT * FROM tasks WHERE run_id=? ORDER BY task_id", (run_id,)
        ),
        "workstreams": fetch_dicts(
            connection, "SELECT * FROM workstreams WHERE run_id=? ORDER BY workstream_id", (run_id,)
        ),
        "pattern_runs": fetch_dicts(
            connection,
            "SELECT * FROM pattern_runs WHERE run_id=? ORDER BY started_at, pattern_run_id",
            (run_id,),
        ),
    }


def status_counts(connection: Connection) -> dict[str, int]:
    """How many runs have each status, statuses in order."""
    return dict(
        connection.execute("SELECT status, count(*) FROM runs GROUP BY status ORDER BY status")
    )


def newest_runs(connection: Connection, limit: int) -> Iterator[dict[str, Any]]:
    """The `limit` runs with the latest last event, newest first, as the index
    `runs_recent` yields them: never every run in memory."""
    return iter_dicts(connection, *_runs_query(None, limit))


def archival(connection: Connection, run_id: str) -> dict[str, list[dict[str, Any]]]:
    """The run's archives and the events that arrived after its archive was written."""
    return {
        "archives": fetch_dicts(
            connection,
            "SELECT archive_path, sha256, size_bytes, members, archived_at FROM archival_log "
            "WHERE run_id=? ORDER BY archived_at, archive_path",
            (run_id,),
        ),
        "late_events": fetch_dicts(
            connection,
            "SELECT event_time, event_type, event_id, archive_path, noted_at FROM archival_late "
            "WHERE run_id=? ORDER BY event_time, event_id",
            (run_id,),
        ),
    }


def run_index(connection: Connection, run_id: str) -> list[IndexEntry]:
    """Where the run's accepted events were read."""
    entries: list[IndexEntry] = []
    for (blob,) in connection.execute(
        "SELECT entries FROM event_index WHERE group_key=?", (GroupKey.run(run_id).text,)
    ):
        entries.extend(load_index(blob))
    return entries


def source_paths(connection: Connection) -> dict[int, str]:
    """Source id → the path it names."""
    return dict(connection.execute("SELECT source_id, path FROM sources"))


def alerts(connection: Connection, *, state: str | None = None, limit: int) -> list[dict[str, Any]]:
    """Alert deliveries (ALERT_COLUMNS), newest first; only `state` when given."""
    where, params = ("WHERE state = ?", [state]) if state else ("", [])
    return fetch_dicts(
        connection,
        f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts {where} "
        "ORDER BY decided_at DESC, id LIMIT ?",
        [*params, limit],
    )


def still_firing(connection: Connection, channel: str) -> list[dict[str, Any]]:
    """The last notification `channel` delivered of every alert that is firing now (its
    alert state says so): what a channel that keeps alerts alive must resume."""
    firing = {
        (rule, group)
        for rule, group, state in connection.execute(
            "SELECT rule, group_key, state FROM alert_state"
        )
        if orjson.loads(state).get("current") == "firing"
    }
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for (payload,) in connection.execute(
        "SELECT payload FROM outbox WHERE kind = 'alert' AND target = ? AND state = 'delivered' "
        "ORDER BY decided_at, id",
        (channel,),
    ):
        notification = orjson.loads(payload)
        latest[(notification["rule"], notification["group_key"])] = notification
    return [n for key, n in latest.items() if key in firing and n["state"] == "firing"]


def last_derived_seq(connection: Connection) -> int:
    """The row number of the newest derived event, 0 without any."""
    row = connection.execute("SELECT max(seq) FROM derived_events").fetchone()
    return int(row[0] or 0)


def derived_since(connection: Connection, seq: int) -> list[tuple[int, str, bytes]]:
    """(seq, recorded_at, data) of every derived event after row `seq`, in order."""
    return connection.execute(
        "SELECT seq, recorded_at, data FROM derived_events WHERE seq > ? ORDER BY seq", (seq,)
    ).fetchall()


@dataclass(frozen=True, slots=True)
class Totals:
    """What a finished build holds, for replay's summary."""

    runs_by_status: dict[str, int]
    stalled_runs: int
    pattern_runs: int


def totals(connection: Connection) -> Totals:
    return Totals(
        status_counts(connection),
        int(connection.execute("SELECT count(*) FROM runs WHERE stalled=1").fetchone()[0]),
        int(connection.execute("SELECT count(*) FROM pattern_runs").fetchone()[0]),
    )


def _read_only(path: Path, timeout_s: float) -> sqlite3.Connection:
    """A reader that cannot write, by a URI that any file name survives (`#`, `?`, `%`)."""
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=timeout_s, isolation_level=None)


def schema_version(path: Path) -> str | None:
    """The SQLite file's schema version, read as a new reader would; None when it is not a
    runwatch database. StoreError (with the driver's words) when it cannot be read."""
    try:
        connection = _read_only(path, 2)
        try:
            row = connection.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise StoreError(str(exc)) from exc
    return None if row is None else str(row[0])


_DONE: Final = "*, tasks_succeeded + tasks_failed + tasks_skipped + tasks_canceled AS done"
"""Tasks that will not run again, whatever their outcome: the bar's numerator."""
_COUNTS: Final = "SELECT status, count(*) AS n, sum(stalled) AS stalled FROM runs GROUP BY status"
_ACTIVE: Final = (
    f"SELECT {_DONE} FROM runs WHERE status IN ('pending', 'running') "
    "ORDER BY stalled DESC, last_event_at DESC, run_id LIMIT ?"
)
_COMPLETED: Final = (
    f"SELECT {_DONE} FROM runs WHERE status NOT IN ('pending', 'running') "
    "ORDER BY ended_at DESC, run_id LIMIT ?"
)
_ALERTS: Final = (
    "SELECT max(decided_at) AS decided_at, rule, payload, group_concat(state) "
    "AS states FROM (SELECT * FROM alerts ORDER BY decided_at DESC LIMIT ?) "
    "GROUP BY alert_id ORDER BY decided_at DESC LIMIT ?"
)
"""One line per alert, whatever its channels, from the newest outbox rows only."""


@dataclass
class Frame:
    """What one frame of the live view shows, read in one transaction; a problem is
    reported, not raised. Runs carry `done`; alerts carry their channels' `states`."""

    counts: dict[str, int] = field(default_factory=dict)
    stalled: int = 0
    active: list[dict[str, Any]] = field(default_factory=list)
    completed: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    finished: list[tuple[int, str, float | None, str]] = field(default_factory=list)
    """Runs ended since `slo_since` (see `slo_reads.finished_runs`), when asked for."""
    problem: str | None = None


def frame(database: Path, *, active: int, recent: int, slo_since: int | None = None) -> Frame:
    """Never writes; a busy, half-built or foreign database gives a frame naming the problem
    (sections are read most important first, so what was read before it still shows)."""
    snap = Frame()
    try:
        connection = _read_only(database, 0.2)
    except sqlite3.Error as exc:
        snap.problem = str(exc)
        return snap
    try:
        connection.execute("BEGIN")
        for row in fetch_dicts(connection, _COUNTS):
            snap.counts[row["status"]] = row["n"]
            snap.stalled += row["stalled"] or 0
        snap.active = fetch_dicts(connection, _ACTIVE, (active,))
        snap.completed = fetch_dicts(connection, _COMPLETED, (recent,))
        snap.alerts = fetch_dicts(connection, _ALERTS, (recent * 20, recent))
        if slo_since is not None:
            snap.finished = finished_runs(connection, slo_since)
    except sqlite3.Error as exc:
        snap.problem = str(exc)
    finally:
        connection.close()
    return snap
