"""The reads `runwatch analyze` makes of a projection. `Bounds` is a time window as stored
time strings, [since, until), None being open: stored times compare like the times they
spell, so the window is a plain comparison on the column."""

from __future__ import annotations

from typing import Any

from runwatch.sinks.store.api import Connection
from runwatch.sinks.store.shared import fetch_dicts

Bounds = tuple[str | None, str | None]
ENDED_TASK_COLUMNS = (
    "run_id",
    "task_id",
    "workstream_id",
    "status",
    "attempts",
    "started_at",
    "ended_at",
)


def _within(column: str, bounds: Bounds) -> tuple[str, list[str]]:
    parts, params = ["1 = 1"], []
    since, until = bounds
    if since is not None:
        parts.append(f"{column} >= ?")
        params.append(since)
    if until is not None:
        parts.append(f"{column} < ?")
        params.append(until)
    return " AND ".join(parts), params


def event_time_now(connection: Connection) -> int | None:
    """The greatest event time a replay recorded (Unix µs), when it recorded one."""
    row = connection.execute("SELECT value FROM meta WHERE key='event_time_now'").fetchone()
    return None if row is None else int(row[0])


def latest_run_event(connection: Connection) -> str | None:
    """The last event time of the latest run, None without runs."""
    latest = connection.execute("SELECT max(last_event_at) FROM runs").fetchone()[0]
    return None if latest is None else str(latest)


def runs_by_day(connection: Connection, bounds: Bounds) -> list[tuple[str, str, int]]:
    """(day of creation, status, runs) of the runs created in the window."""
    where, params = _within("created_at", bounds)
    return [
        (day, status, count)
        for day, status, count in connection.execute(
            f"SELECT substr(created_at, 1, 10), status, count(*) FROM runs WHERE {where} "
            "GROUP BY 1, 2",
            params,
        )
    ]


def run_durations(connection: Connection, bounds: Bounds) -> list[tuple[str, float]]:
    """(status, seconds) of the runs created in the window that have a duration."""
    where, params = _within("created_at", bounds)
    return [
        (status, seconds)
        for status, seconds in connection.execute(
            f"SELECT status, duration_s FROM runs WHERE duration_s IS NOT NULL AND {where}",
            params,
        )
    ]


def stalled_runs(connection: Connection, bounds: Bounds) -> int:
    where, params = _within("created_at", bounds)
    row = connection.execute(f"SELECT count(*) FROM runs WHERE stalled = 1 AND {where}", params)
    return int(row.fetchone()[0])


def ended_tasks(connection: Connection, bounds: Bounds) -> list[tuple[Any, ...]]:
    """Ended tasks that started in the window (ENDED_TASK_COLUMNS)."""
    where, params = _within("started_at", bounds)
    return [
        tuple(row)
        for row in connection.execute(
            f"SELECT {', '.join(ENDED_TASK_COLUMNS)} FROM tasks "
            f"WHERE ended_at IS NOT NULL AND started_at IS NOT NULL AND {where}",
            params,
        )
    ]


def started_pattern_runs(connection: Connection, bounds: Bounds) -> list[dict[str, Any]]:
    """Pattern runs that started in the window."""
    where, params = _within("started_at", bounds)
    return fetch_dicts(
        connection,
        "SELECT pattern_run_id, pattern_id, run_id, status, phase, started_at, finished_at, "
        f"duration_s, error_message FROM pattern_runs WHERE started_at IS NOT NULL AND {where}",
        params,
    )


def run_ends(connection: Connection) -> list[tuple[str, str, str | None]]:
    """(run id, status, ended_at) of every run."""
    return [
        (run_id, status, ended)
        for run_id, status, ended in connection.execute("SELECT run_id, status, ended_at FROM runs")
    ]


def stall_records(connection: Connection) -> list[tuple[str, str, bytes]]:
    """(type, run id, data) of the recorded RUN_STALLED and RUN_RECOVERED, in record order."""
    return [
        (kind, run_id, bytes(data))
        for kind, run_id, data in connection.execute(
            "SELECT type, run_id, data FROM derived_events WHERE type IN "
            "('RUN_STALLED', 'RUN_RECOVERED') AND run_id IS NOT NULL ORDER BY seq"
        )
    ]


def dead_letter_reasons(connection: Connection) -> list[tuple[str, int, str, int]]:
    """(reason, count, first source, its line) by reason, the most frequent first; the first
    place is by file, then offset."""
    out = []
    for reason, count in connection.execute(
        "SELECT reason, count(*) FROM dead_letters GROUP BY reason ORDER BY 2 DESC, 1"
    ).fetchall():
        source, line = connection.execute(
            "SELECT source, line FROM dead_letters WHERE reason = ? "
            'ORDER BY source, "offset" LIMIT 1',
            (reason,),
        ).fetchone()
        out.append((reason, int(count), source, int(line)))
    return out


def counters(connection: Connection) -> dict[str, int]:
    return dict(connection.execute("SELECT name, value FROM counters"))
