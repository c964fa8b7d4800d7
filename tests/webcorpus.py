"""What the dashboard tests share: crafted logs (a task retried after a wait, a hostile run,
runs of several statuses) and run rows committed the way the service commits them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import requests

from runwatch.sinks.store import Store
from runwatch.sinks.store.api import Changes
from runwatch.sinks.store.schema import RUN_COLUMNS

HOSTILE_RUN = "<img src=x onerror=alert(1)>&amp;"
HOSTILE_TASK = '"><svg onload=alert(2)>'
HOSTILE_ERROR = "<script>document.title='pwned'</script><b>bold?</b>"
RETRIED = "R-retry"
START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def at(seconds: float) -> str:
    return (START + timedelta(seconds=seconds)).isoformat()


def event(n: int, kind: str, run_id: str, seconds: float, **extra: Any) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"{run_id}-{n}",
            "event_type": kind,
            "run_id": run_id,
            "timestamp": at(seconds),
        }
        | extra
    )


def crafted_logs() -> list[bytes]:
    """R-retry: T1 fails, waits 29m 30s, then succeeds; T2 runs once in another workstream.
    The hostile run fails with markup in its ids and its error. R-ok succeeded, R-run runs."""
    lines = [
        event(1, "run_started", RETRIED, 0, payload={"total_tasks": 2}),
        event(2, "task_started", RETRIED, 10, task_id="T1", workstream_id="WS-A"),
        event(
            3,
            "task_failed",
            RETRIED,
            70,
            task_id="T1",
            workstream_id="WS-A",
            payload={"error_message": "flaky network"},
        ),
        event(4, "task_started", RETRIED, 70 + 1770, task_id="T1", workstream_id="WS-A"),
        event(5, "task_completed", RETRIED, 1900, task_id="T1", workstream_id="WS-A"),
        event(6, "task_started", RETRIED, 20, task_id="T2", workstream_id="WS-B"),
        event(7, "task_completed", RETRIED, 400, task_id="T2", workstream_id="WS-B"),
        event(8, "run_completed", RETRIED, 1910, payload={"status": "succeeded"}),
        event(1, "run_started", HOSTILE_RUN, 100),
        event(2, "task_started", HOSTILE_RUN, 110, task_id=HOSTILE_TASK, workstream_id="<i>ws</i>"),
        event(
            3,
            "task_failed",
            HOSTILE_RUN,
            170,
            task_id=HOSTILE_TASK,
            workstream_id="<i>ws</i>",
            severity="error",
            payload={"error_message": HOSTILE_ERROR},
        ),
        event(4, "run_failed", HOSTILE_RUN, 180),
        event(1, "run_started", "R-ok", 200),
        event(2, "run_succeeded", "R-ok", 260),
        event(1, "run_started", "R-run", 300),
        event(2, "task_started", "R-run", 310, task_id="T9"),
    ]
    return lines


def run_row(run_id: str, **values: Any) -> dict[str, Any]:
    """A whole `runs` row as the fold writes it: zeros and nulls unless given."""
    row: dict[str, Any] = dict.fromkeys(RUN_COLUMNS, 0)
    row.update(
        run_id=run_id,
        status="running",
        created_at=None,
        started_at=at(0),
        ended_at=None,
        last_event_at=at(0),
        duration_s=None,
    )
    return row | values


def commit_runs(
    store: Store, *rows: dict[str, Any], stalled: list[tuple[int, str]] | None = None
) -> None:
    store.commit(Changes(runs=list(rows), stalled=stalled or []), seen_at=at(0))


class Stream:
    """A real SSE client: events as (name, id, data) as they arrive."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.response = requests.get(url, stream=True, timeout=10, headers=headers)
        assert self.response.status_code == 200
        assert self.response.headers["Content-Type"].startswith("text/event-stream")
        self.lines: Iterator[bytes] = self.response.iter_lines()
        self.comments = 0

    def next(self, deadline_s: float = 5.0, name: str = "run") -> tuple[str, str | None, Any]:
        """The next event called `name` (heartbeat comments and other events counted and
        skipped)."""
        fields: dict[str, str] = {}
        end = time.monotonic() + deadline_s
        for raw in self.lines:
            assert time.monotonic() < end, f"no {name} event within {deadline_s} s"
            line = raw.decode()
            if line.startswith(":"):
                self.comments += 1
            elif line:
                key, _, value = line.partition(":")
                fields[key] = value.removeprefix(" ")
            elif fields:
                if fields.get("event") == name:
                    return name, fields.get("id"), orjson.loads(fields["data"])
                fields = {}
        raise AssertionError("the stream ended")

    def close(self) -> None:
        self.response.close()
