"""The timeline both the report and the dashboard draw, and durations as people read them."""

from __future__ import annotations

from typing import Any

import pytest

from runwatch.sinks.timeline import (
    attempts,
    build_timeline,
    human_duration,
    human_time,
    timeline_svg,
)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0.0, "0ms"),
        (0.85, "850ms"),
        (4.25, "4.2s"),
        (42.4, "42s"),
        (60, "1m"),
        (1769.749, "29m 30s"),
        (3 * 3600 + 5 * 60 + 1, "3h 05m"),
        (2 * 86400 + 4 * 3600 + 59, "2d 4h"),
    ],
)
def test_human_durations(seconds: float | None, text: str) -> None:
    assert human_duration(seconds) == text


def test_human_time() -> None:
    assert human_time("2026-12-07T05:50:46.123456Z") == "2026-12-07 05:50:46"
    assert human_time(None) == "-"


def task(task_id: str = "T", **row: Any) -> dict[str, Any]:
    return (
        {"task_id": task_id, "workstream_id": None, "status": "running"}
        | {
            "started_at": None,
            "ended_at": None,
        }
        | row
    )


def ev(n: int, kind: str, second: int, task_id: str = "T", **payload: Any) -> dict[str, Any]:
    return {
        "id": f"e{n}",
        "type": kind,
        "time": f"2026-12-01T09:00:{second:02d}.000000Z",
        "task_id": task_id,
        "payload": payload,
    }


def test_each_start_opens_an_attempt_and_the_next_end_closes_it() -> None:
    """A retry is a second segment; the wait is the gap; a restart without an end cuts the
    earlier attempt; an attempt still open runs to the end of the view."""
    events = [
        ev(1, "task_started", 0),
        ev(2, "step_completed", 5, status="failed"),
        ev(3, "task_started", 15),
        ev(4, "task_started", 20),
    ]
    found = attempts(task(), events, "2026-12-01T09:00:30.000000Z")
    assert [(a["status"], a["duration_s"], a["wait_s"], a["open"]) for a in found] == [
        ("failed", 5.0, None, False),
        ("canceled", 5.0, 10.0, False),
        ("running", 10.0, 0.0, True),
    ]


def test_a_task_without_readable_events_is_drawn_from_its_row() -> None:
    """Logs rotated away: the row's span still shows, as one segment."""
    row = task(
        status="succeeded", started_at="2026-12-01T09:00:00Z", ended_at="2026-12-01T09:01:00Z"
    )
    (only,) = attempts(row, [], None)
    assert (only["status"], only["duration_s"], only["attempt"]) == ("succeeded", 60.0, 1)
    assert attempts(task(status="pending"), [], None) == []


def test_lanes_are_workstreams_with_the_unassigned_last() -> None:
    tasks = [
        task("b", workstream_id="WS-2"),
        task("a", workstream_id=None),
        task("c", workstream_id="WS-1"),
    ]
    events = [
        ev(1, "task_started", 1, "b"),
        ev(2, "task_started", 2, "a"),
        ev(3, "task_started", 3, "c"),
    ]
    run = {
        "created_at": "2026-12-01T09:00:00.000000Z",
        "last_event_at": "2026-12-01T09:00:09.000000Z",
    }
    timeline = build_timeline(run, tasks, events)
    assert [w["workstream_id"] for w in timeline["workstreams"]] == ["WS-1", "WS-2", None]
    assert (timeline["start"], timeline["end"]) == (run["created_at"], run["last_event_at"])


def test_tasks_are_labelled_by_the_name_task_created_gave_them() -> None:
    """People know `lint` and `unit-tests`, not ULIDs: the name labels the row, the id stays
    in its tooltip; a task without a name (or a hostile one) shows its id, as text."""
    tasks = [task("T-1"), task("T-2"), task("T-3")]
    events = [
        ev(1, "task_created", 0, "T-1", name="lint"),
        ev(2, "task_created", 0, "T-3", name="<b>x</b>"),
        ev(3, "task_started", 1, "T-1"),
        ev(4, "task_started", 2, "T-2"),
        ev(5, "task_started", 3, "T-3"),
    ]
    run = {"created_at": "2026-12-01T09:00:00.000000Z"}
    timeline = build_timeline(run, tasks, events)
    (lane,) = timeline["workstreams"]
    assert [(t["task_id"], t["name"]) for t in lane["tasks"]] == [
        ("T-1", "lint"),
        ("T-2", None),
        ("T-3", "<b>x</b>"),
    ]
    drawn = timeline_svg(timeline, 0, 10**18, lambda status: f"s-{status}")
    assert ">lint<title>T-1</title></text>" in drawn
    assert ">T-2<title>T-2</title></text>" in drawn
    assert "&lt;b&gt;x&lt;/b&gt;" in drawn and "<b>x</b>" not in drawn
