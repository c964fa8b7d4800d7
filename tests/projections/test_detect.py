"""Stall and abandonment detection, and how an abandoned run shows and comes back."""

from __future__ import annotations

from runwatch.projections import Event, RunState, detect_stalls
from runwatch.stream.core.decode import decode

MINUTE = 60_000_000
DAY = 24 * 60 * MINUTE


def event(kind: str, time: str, eid: str, run: str = "R1") -> Event:
    line = f'{{"event_id":"{eid}","event_type":"{kind}","timestamp":"{time}","run_id":"{run}"}}'
    decoded = decode(line.encode())
    assert isinstance(decoded, Event)
    return decoded


def test_a_run_silent_past_forget_after_is_abandoned_once_and_its_stall_resolves() -> None:
    """A run that never ends must not stay watched (and alerting) forever: past
    `forget_after` it is announced once, and a stall already flagged is resolved with it."""
    now = 10 * DAY
    open_runs = {
        "QUIET": (now - 8 * DAY, False),
        "FLAGGED": (now - 8 * DAY, True),
        "STALLED": (now - 2 * DAY, False),
        "BUSY": (now - MINUTE, False),
    }
    changes = detect_stalls(open_runs, now, 30 * MINUTE, 7 * DAY)
    seen = [(c.type, c.run_id, c.data.get("reason")) for c in changes]
    assert seen == [
        ("RUN_RECOVERED", "FLAGGED", "abandoned"),
        ("RUN_ABANDONED", "FLAGGED", None),
        ("RUN_ABANDONED", "QUIET", None),
        ("RUN_STALLED", "STALLED", None),
    ]
    abandoned = next(c for c in changes if c.run_id == "QUIET")
    assert abandoned.time == now - 8 * DAY + 7 * DAY, "dated at the end of forget_after"
    assert all(c.type != "RUN_ABANDONED" for c in detect_stalls(open_runs, now, 30 * MINUTE))


def test_a_limit_bounds_the_runs_changed_not_the_events_of_one_run() -> None:
    """A service applies a bounded number of changes per tick; detection must stop there
    (not describe every silent run each tick) and never split one run's pair of events."""
    now = 10 * DAY
    open_runs = {
        "D-busy": (now - MINUTE, False),
        "C-stalled": (now - 2 * DAY, False),
        "B-flagged": (now - 8 * DAY, True),
        "A-quiet": (now - 8 * DAY, False),
    }
    limited = detect_stalls(open_runs, now, 30 * MINUTE, 7 * DAY, limit=2)
    assert [(c.type, c.run_id) for c in limited] == [
        ("RUN_ABANDONED", "A-quiet"),
        ("RUN_RECOVERED", "B-flagged"),
        ("RUN_ABANDONED", "B-flagged"),
    ]
    everything = detect_stalls(open_runs, now, 30 * MINUTE, 7 * DAY)
    assert everything[: len(limited)] == limited
    assert detect_stalls(open_runs, now, 30 * MINUTE, 7 * DAY, limit=0) == []


def test_an_abandoned_run_shows_as_abandoned_until_an_event_brings_it_back() -> None:
    run = RunState("R1")
    run.apply(event("run_started", "2026-01-01T00:00:00Z", "e1"))
    run.abandoned = True
    assert run.row()["status"] == "abandoned"
    saved = RunState.from_dict("R1", run.to_dict(), set(run.seen))
    assert saved.row()["status"] == "abandoned", "the mark survives eviction and restarts"
    assert saved.apply(event("task_started", "2026-01-09T00:00:00Z", "e2"))
    assert saved.row()["status"] == "running"
    saved.abandoned = True
    assert not saved.apply(event("run_started", "2026-01-01T00:00:00Z", "e1"))
    assert saved.abandoned, "a duplicate does not bring it back"


def test_a_finished_run_is_never_shown_abandoned() -> None:
    run = RunState("R1")
    run.apply(event("run_started", "2026-01-01T00:00:00Z", "e1"))
    run.apply(event("run_succeeded", "2026-01-01T00:01:00Z", "e2"))
    run.abandoned = True
    assert run.row()["status"] == "succeeded"
