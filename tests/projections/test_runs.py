"""Run, task and workstream semantics of contract §2, one behaviour per test."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import orjson

from runwatch.projections import Event, RunState
from runwatch.stream.core.decode import decode

T0 = datetime(2026, 1, 5, 8, 0, 0)


def ev(etype: str, second: float, run: str = "R1", **fields: Any) -> Event:
    """An event-bus shape event `second` seconds after T0, decoded like real input."""
    when = (T0 + timedelta(seconds=second)).isoformat() + "Z"
    event = decode(orjson.dumps({"event_type": etype, "timestamp": when, "run_id": run, **fields}))
    assert isinstance(event, Event), event
    return event


def fold(*events: Event) -> RunState:
    state = RunState("R1")
    for event in events:
        state.apply(event)
    return state


def test_run_lifecycle_explicit_completion() -> None:
    """An explicit run_completed decides status and ended_at; duration runs from the start."""
    state = fold(
        ev("run_created", 0, payload={"total_tasks": 2}),
        ev("run_started", 1),
        ev("task_started", 2, task_id="a"),
        ev("task_completed", 5, task_id="a"),
        ev("run_completed", 9, payload={"status": "succeeded"}),
    )
    row = state.row()
    assert row["status"] == "succeeded"
    assert row["started_at"] == "2026-01-05T08:00:01.000000Z"
    assert row["ended_at"] == "2026-01-05T08:00:09.000000Z"
    assert row["duration_s"] == 8.0
    assert row["tasks_total"] == 2
    assert row["tasks_succeeded"] == 1
    assert row["events_total"] == 5


def test_run_completed_without_valid_status_derives_from_tasks() -> None:
    """run_completed with an unknown payload.status falls back to the tasks' outcome."""
    state = fold(
        ev("task_started", 1, task_id="a"),
        ev("task_failed", 2, task_id="a"),
        ev("task_started", 1, task_id="b"),
        ev("task_completed", 2, task_id="b"),
        ev("run_completed", 3, payload={"status": "done-ish"}),
    )
    assert state.status() == ("partial", state.explicit_key[0])  # type: ignore[index]


def test_latest_explicit_terminal_event_wins() -> None:
    """A later run_succeeded overrides an earlier run_failed, whatever the arrival order."""
    late, early = ev("run_succeeded", 20), ev("run_failed", 10)
    assert fold(late, early).status()[0] == "succeeded"
    assert fold(early, late).status()[0] == "succeeded"


def test_implicit_completion_when_declared_tasks_are_terminal() -> None:
    """N declared tasks all terminal and no run-level end: the run ends at the last task."""
    state = fold(
        ev("run_created", 0, payload={"total_steps": 2}),
        ev("task_started", 1, task_id="a"),
        ev("task_completed", 4, task_id="a"),
        ev("task_started", 1, task_id="b"),
        ev("task_failed", 6, task_id="b"),
    )
    row = state.row()
    assert row["status"] == "partial"
    assert row["ended_at"] == "2026-01-05T08:00:06.000000Z"


def test_implicit_end_moves_back_when_the_last_task_to_end_runs_again() -> None:
    """The run ends at the latest end of its terminal tasks: a task that ended last and
    then started again (a later event) no longer counts, the one before it does."""
    state = fold(
        ev("run_created", 0, payload={"total_tasks": 1}),
        ev("task_completed", 2, task_id="a"),
        ev("task_completed", 5, task_id="b"),
    )
    assert state.row()["ended_at"] == "2026-01-05T08:00:05.000000Z"
    state.apply(ev("task_started", 7, task_id="b"))
    row = state.row()
    assert (row["status"], row["ended_at"]) == ("succeeded", "2026-01-05T08:00:02.000000Z")
    assert (row["tasks_succeeded"], row["tasks_running"]) == (1, 1)


def test_no_implicit_completion_without_declared_total() -> None:
    """Without a declared total, finished tasks alone never end a run."""
    state = fold(ev("task_started", 1, task_id="a"), ev("task_completed", 2, task_id="a"))
    assert state.row()["status"] == "running"


def test_pending_until_something_starts() -> None:
    """A run with only a run_created is pending, then running once a task starts."""
    state = fold(ev("run_created", 0))
    assert state.row()["status"] == "pending"
    state.apply(ev("step_started", 1, task_id="a"))
    assert state.row()["status"] == "running"


def test_failed_when_all_failed() -> None:
    """Failures and no success give failed, not partial."""
    state = fold(
        ev("run_created", 0, payload={"total_tasks": 1}),
        ev("task_started", 1, task_id="a"),
        ev("task_failed", 2, task_id="a"),
    )
    assert state.row()["status"] == "failed"


def test_task_latest_event_by_time_then_rank() -> None:
    """Equal timestamps are ordered by lifecycle rank: completed beats started."""
    state = fold(ev("task_completed", 5, task_id="a"), ev("task_started", 5, task_id="a"))
    task = state.task_rows()[0]
    assert task["status"] == "succeeded"
    assert task["ended_at"] == "2026-01-05T08:00:05.000000Z"


def test_task_retries_count_attempts_and_keep_earliest_start() -> None:
    """attempts counts distinct start events; started_at is the first of them."""
    state = fold(
        ev("task_started", 1, task_id="a"),
        ev("task_failed", 2, task_id="a"),
        ev("task_started", 3, task_id="a"),
        ev("task_completed", 4, task_id="a"),
    )
    task = state.task_rows()[0]
    assert (task["attempts"], task["status"]) == (2, "succeeded")
    assert task["started_at"] == "2026-01-05T08:00:01.000000Z"


def test_step_completed_reads_payload_status() -> None:
    """step_completed takes payload.status; anything unknown counts as failed."""
    state = fold(
        ev("step_completed", 1, task_id="a", payload={"status": "skipped"}),
        ev("step_completed", 1, task_id="b", payload={"status": "weird"}),
        ev("step_completed", 1, task_id="c", payload={"status": "cancelled"}),
    )
    assert [t["status"] for t in state.task_rows()] == ["skipped", "failed", "canceled"]


def test_running_task_has_no_end() -> None:
    """ended_at is only set for a terminal task."""
    state = fold(ev("task_started", 1, task_id="a"), ev("task_progress", 2, task_id="a"))
    assert state.task_rows()[0]["ended_at"] is None
    assert state.row()["tasks_running"] == 1


def test_error_events_count_severity_and_failed_types() -> None:
    """error_events counts error/critical severity and *_failed types, once each."""
    state = fold(
        ev("task_failed", 1, task_id="a"),
        ev("tool_call_error", 2, severity="ERROR"),
        ev("note", 3, severity="critical"),
        ev("note", 4, severity="warning"),
    )
    assert state.row()["error_events"] == 3


def test_tasks_total_is_max_of_declared_and_seen() -> None:
    """More tasks seen than declared raises tasks_total."""
    state = fold(
        ev("run_created", 0, payload={"total_tasks": 1}),
        *(ev("task_created", 1, task_id=str(i)) for i in range(3)),
    )
    assert state.row()["tasks_total"] == 3


def test_workstream_status_derived_from_tasks() -> None:
    """Without workstream events, a workstream's status follows its tasks."""
    state = fold(
        ev("task_started", 1, task_id="a", workstream_id="W1"),
        ev("task_completed", 2, task_id="a", workstream_id="W1"),
        ev("task_started", 1, task_id="b", workstream_id="W2"),
        ev("task_failed", 2, task_id="c", job_id="W3"),
    )
    rows = {r["workstream_id"]: r for r in state.workstream_rows()}
    assert rows["W1"]["status"] == "succeeded"
    assert rows["W2"]["status"] == "running"
    assert rows["W3"]["status"] == "failed"
    assert rows["W3"]["tasks_failed"] == 1


def test_workstream_event_overrides_derived_status() -> None:
    """A latest workstream_paused wins over what the tasks say."""
    state = fold(
        ev("task_started", 1, task_id="a", workstream_id="W1"),
        ev("workstream_started", 1, workstream_id="W1"),
        ev("workstream_paused", 3, workstream_id="W1"),
    )
    assert state.workstream_rows()[0]["status"] == "paused"


def test_observe_emits_completion_once_then_status_change() -> None:
    """RUN_COMPLETED fires the first time a run ends; a late change gives RUN_STATUS_CHANGED."""
    state = fold(ev("run_started", 0), ev("run_failed", 5))
    first = state.observe()
    assert [d.type for d in first] == ["RUN_COMPLETED"]
    assert first[0].data["status"] == "failed"
    assert state.observe() == []
    state.apply(ev("run_succeeded", 9))
    changed = state.observe()
    assert [(d.type, d.data["previous_status"], d.data["status"]) for d in changed] == [
        ("RUN_STATUS_CHANGED", "failed", "succeeded")
    ]


def test_state_round_trips_through_dict() -> None:
    """A saved and restored state folds on exactly as the original would."""
    events = [
        ev("run_created", 0, payload={"total_tasks": 2}),
        ev("task_started", 1, task_id="a", workstream_id="W"),
        ev("workstream_started", 1, workstream_id="W"),
        ev("run_failed", 4),
    ]
    state = fold(*events)
    restored = RunState.from_dict(
        "R1", orjson.loads(orjson.dumps(state.to_dict())), set(state.seen)
    )
    later = ev("task_completed", 3, task_id="a")
    state.apply(later)
    restored.apply(later)
    assert restored.row() == state.row()
    assert restored.task_rows() == state.task_rows()
    assert restored.workstream_rows() == state.workstream_rows()


def test_apply_is_idempotent() -> None:
    """A duplicate is refused and changes nothing, so replays and retries count once."""
    event = ev("task_started", 1, task_id="a")
    state = fold(event)
    before = (state.row(), state.task_rows())
    assert state.apply(event) is False
    assert (state.row(), state.task_rows()) == before


def test_merge_equals_folding_the_union() -> None:
    """Two partial states merged give the state of all their events (parallel replay)."""
    events = [
        ev("run_created", 0, payload={"total_tasks": 2}),
        ev("run_started", 1),
        ev("task_started", 2, task_id="a", workstream_id="W"),
        ev("task_started", 2, task_id="b"),
        ev("task_failed", 3, task_id="a"),
        ev("task_started", 4, task_id="a"),
        ev("task_completed", 6, task_id="a"),
        ev("workstream_completed", 7, workstream_id="W"),
        ev("task_completed", 8, task_id="b", severity="error"),
    ]
    whole = fold(*events)
    left, right = fold(*events[::2]), fold(*events[1::2], events[0])
    left.merge(right)
    assert left.row() == whole.row()
    assert left.task_rows() == whole.task_rows()
    assert left.workstream_rows() == whole.workstream_rows()
