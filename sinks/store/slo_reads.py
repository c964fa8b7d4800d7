"""The reads service levels make: the finished runs of a time range, and the alert level
each SLO last announced (its newest SLO_BURN or SLO_RECOVERED)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from runwatch.projections import to_micros
from runwatch.projections.events import format_time
from runwatch.sinks.store.api import Connection

COUNTED = ("succeeded", "failed", "partial", "quarantined")
"""Terminal statuses an SLO may count (canceled runs never count)."""


def finished_runs(
    connection: Connection, since_us: int | None = None
) -> list[tuple[int, str, float | None, str]]:
    """(ended_at in UTC µs, status, duration_s, run_id) of the runs that ended after
    `since_us` (all when None) with a status an SLO counts, oldest first."""
    marks = ", ".join("?" for _ in COUNTED)
    sql = f"SELECT ended_at, status, duration_s, run_id FROM runs WHERE status IN ({marks}) "
    params: list[object] = list(COUNTED)
    if since_us is not None:
        sql += "AND ended_at > ? "
        params.append(format_time(since_us))
    out = _rows(connection.execute(sql + "AND ended_at IS NOT NULL", params).fetchall())
    out.sort()
    return out


def finished_runs_of(
    connection: Connection, run_ids: list[str]
) -> list[tuple[int, str, float | None, str]]:
    """`finished_runs` of these runs only (those that do not count are left out)."""
    out: list[tuple[int, str, float | None, str]] = []
    counted = ", ".join("?" for _ in COUNTED)
    for start in range(0, len(run_ids), 500):
        chunk = run_ids[start : start + 500]
        marks = ", ".join("?" for _ in chunk)
        rows = connection.execute(
            "SELECT ended_at, status, duration_s, run_id FROM runs "
            f"WHERE run_id IN ({marks}) AND status IN ({counted}) AND ended_at IS NOT NULL",
            [*chunk, *COUNTED],
        ).fetchall()
        out.extend(_rows(rows))
    return out


def _rows(rows: list[Any]) -> list[tuple[int, str, float | None, str]]:
    return [
        (to_micros(datetime.fromisoformat(ended)), status, duration, run_id)
        for ended, status, duration, run_id in rows
    ]


def latest_success(connection: Connection) -> str | None:
    """When the newest successful run ended."""
    row = connection.execute("SELECT max(ended_at) FROM runs WHERE status = 'succeeded'").fetchone()
    return None if row is None else row[0]


def announced_levels(connection: Connection) -> dict[str, str | None]:
    """SLO name → the level its newest SLO_BURN announced, or None after an SLO_RECOVERED."""
    levels: dict[str, str | None] = {}
    for (data,) in connection.execute(
        "SELECT data FROM derived_events WHERE type IN ('SLO_BURN', 'SLO_RECOVERED') ORDER BY seq"
    ):
        record = orjson.loads(data)
        levels[str(record.get("slo"))] = record.get("level")
    return levels
