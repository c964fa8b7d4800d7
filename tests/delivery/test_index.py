"""`reports/index.html` stays small however many runs the projection holds."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

from runwatch.projections import format_time
from runwatch.sinks.reports import ReportsConfig
from runwatch.sinks.store import reads
from runwatch.sinks.store.api import Changes
from runwatch.sinks.store.sqlite import SqliteStore
from runwatch.stream.delivery import jobs
from runwatch.stream.settings.service import Settings

NOW = "2026-01-01T00:00:00.000000Z"
BASE = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in µs


def run_row(n: int) -> dict[str, Any]:
    return {
        "run_id": f"R{n:05d}",
        "status": "failed" if n % 3 == 0 else "succeeded",
        "created_at": NOW,
        "started_at": NOW,
        "ended_at": format_time(BASE + n * 1_000_000),
        "last_event_at": format_time(BASE + n * 1_000_000),
        "duration_s": float(n),
        "tasks_total": 2,
        "tasks_succeeded": 2,
        "tasks_failed": 0,
        "tasks_running": 0,
        "tasks_pending": 0,
        "tasks_skipped": 0,
        "tasks_canceled": 0,
        "events_total": 6,
        "error_events": 0,
        "stalled": 0,
    }


def index_page(db: Path, runs: range, limit: int) -> str:
    store = SqliteStore(db)
    try:
        store.commit(Changes(runs=[run_row(n) for n in runs]), NOW)
        settings = Settings(database=db, reports=ReportsConfig(index_limit=limit))
        return jobs.build_index_page(store.db, settings).decode()
    finally:
        store.close()


def test_the_index_lists_the_newest_runs_and_counts_the_rest(tmp_path: Path) -> None:
    """A soak with 100,000 runs made a 21.9 MB index, rebuilt inside the service: it lists
    the newest `index_limit` runs and counts every run by status instead."""
    page = index_page(tmp_path / "small.db", range(600), 25)
    links = re.findall(r'href="\./([^"]+)\.html"', page)
    assert links == [f"R{n:05d}" for n in range(599, 574, -1)]
    assert "<h1>Runs (600)</h1>" in page
    assert "the newest 25 shown, by status: failed: 200, succeeded: 400" in page
    bigger = index_page(tmp_path / "big.db", range(20_000), 25)
    assert len(re.findall(r'href="\./', bigger)) == 25
    assert len(bigger) < len(page) + 100, "the page does not grow with the runs"


def test_the_newest_runs_are_read_through_an_index_without_sorting(tmp_path: Path) -> None:
    """The index page's query walks `runs_recent` and stops after the limit: no sort of
    every row."""
    SqliteStore(tmp_path / "rw.db").close()
    connection = sqlite3.connect(tmp_path / "rw.db")
    statements: list[str] = []
    connection.set_trace_callback(statements.append)
    list(reads.newest_runs(connection, 10))
    connection.set_trace_callback(None)
    [query] = statements
    plan = " ".join(str(row[-1]) for row in connection.execute(f"EXPLAIN QUERY PLAN {query}"))
    connection.close()
    assert "runs_recent" in plan and "TEMP B-TREE" not in plan
