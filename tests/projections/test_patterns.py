"""pattern_runs semantics of contract §2, including the real upstream quirks."""

from __future__ import annotations

from pathlib import Path

from helpers import SEMGREP_RUN
from runwatch.projections import Event, PatternRunState
from runwatch.stream.core.decode import decode

UPSTREAM = Path(__file__).parents[1] / "fixtures" / "upstream" / "pattern_events"


def events_of(path: Path) -> list[Event]:
    out = []
    for line in path.read_bytes().splitlines():
        event = decode(line)
        assert isinstance(event, Event)
        out.append(event)
    return out


def test_upstream_semgrep_run_ends_succeeded_in_execution() -> None:
    """Six phases share one timestamp: rank by phase must still pick the right latest."""
    state = PatternRunState("PRUN-01KB0A3BJ6Y76MT7R6HYDJAQC5")
    for event in reversed(events_of(UPSTREAM / "pattern_events.jsonl")):
        if event.task == state.pattern_run_id:
            state.apply(event)
    assert state.row() == SEMGREP_RUN


def test_same_timestamp_without_terminal_event_picks_highest_phase() -> None:
    """With only the shared-timestamp events, the run is running in execution."""
    state = PatternRunState("PRUN-01KB0A3BJ6Y76MT7R6HYDJAQC5")
    for event in events_of(UPSTREAM / "pattern_events.jsonl")[:6]:
        state.apply(event)
    row = state.row()
    assert (row["status"], row["phase"], row["finished_at"]) == ("running", "execution", None)


def test_failed_pattern_keeps_error_message() -> None:
    """A failed execution reports its error and duration."""
    lines = [
        b'{"event_id":"E1","event_type":"pattern.execution.started","timestamp":"2026-01-01T00:00:00Z",'
        b'"job_id":"J","pattern_run_id":"P","pattern_id":"PAT-X","status":"in_progress","details":{}}',
        b'{"event_id":"E2","event_type":"pattern.execution.failed","timestamp":"2026-01-01T00:00:07Z",'
        b'"job_id":"J","pattern_run_id":"P","pattern_id":"PAT-X","status":"failed",'
        b'"details":{"error":"exit 3","duration_seconds":7,"run_id":"R9"}}',
    ]
    state = PatternRunState("P")
    for line in lines:
        event = decode(line)
        assert isinstance(event, Event)
        state.apply(event)
    row = state.row()
    assert (row["status"], row["error_message"], row["duration_s"], row["run_id"]) == (
        "failed",
        "exit 3",
        7.0,
        "R9",
    )
    assert row["finished_at"] == "2026-01-01T00:00:07.000000Z"
