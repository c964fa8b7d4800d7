"""The reads `runwatch traces export` makes: which finished runs to export."""

from __future__ import annotations

from collections.abc import Iterable

from runwatch.sinks.store.api import Connection


def finished_runs(
    connection: Connection, terminal: Iterable[str], *, since: str | None = None
) -> list[str]:
    """Ids of the runs whose status is in `terminal` and that ended at or after `since` (a
    stored time string), the earliest end first."""
    statuses = sorted(terminal)
    marks = ", ".join("?" for _ in statuses)
    where = f"status IN ({marks})" + ("" if since is None else " AND ended_at >= ?")
    params: list[object] = [*statuses, *([] if since is None else [since])]
    rows = connection.execute(
        f"SELECT run_id FROM runs WHERE {where} ORDER BY ended_at, run_id", params
    ).fetchall()
    return [str(row[0]) for row in rows]
