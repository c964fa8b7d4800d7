"""A run's trace from its rows and events: the span tree, ids, times and outcomes (pure)."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import pytest

from otlp import RETRIED, WORKSTREAM, at, ev, run_row, task_row, us
from runwatch.projections.traces import Span, Trace, run_trace, span_id, trace_id


def retried_trace(**run: Any) -> Trace:
    return run_trace(run_row(**run), [task_row()], [WORKSTREAM], [], RETRIED)


def by_name(trace: Trace) -> dict[str, list[Span]]:
    found: dict[str, list[Span]] = {}
    for span in trace.spans:
        found.setdefault(span.name, []).append(span)
    return found


def test_ids_follow_the_published_formula() -> None:
    """Anyone can find a run's trace from its id alone: SHA-256 of "runwatch/" + run id."""
    assert trace_id("R1") == int.from_bytes(hashlib.sha256(b"runwatch/R1").digest()[:16])
    expected = hashlib.sha256(b"runwatch/R1\0task\0T1\x002").digest()[:8]
    assert span_id("R1", "task", "T1", "2") == int.from_bytes(expected)
    trace = retried_trace()
    assert trace.trace_id == trace_id("R1")
    assert len({span.span_id for span in trace.spans}) == len(trace.spans)


def test_the_same_events_in_any_order_give_the_same_trace() -> None:
    """A re-export, or an export from a rebuilt database, sends exactly the same spans."""
    shuffled = list(RETRIED)
    random.Random(7).shuffle(shuffled)
    again = run_trace(run_row(), [task_row()], [WORKSTREAM], [], shuffled)
    assert again == retried_trace()


def test_root_span_is_the_run() -> None:
    """The root carries the CI/CD pipeline attributes, from the run's start to its end."""
    root = retried_trace().spans[0]
    assert (root.name, root.kind, root.parent_id) == ("RUN nightly-build", "server", None)
    assert (root.start, root.end) == (us(1), us(100))
    assert root.attributes["cicd.pipeline.run.id"] == "R1"
    assert root.attributes["cicd.pipeline.name"] == "nightly-build"
    assert root.attributes["cicd.pipeline.result"] == "success"
    assert root.status == "unset" and "error.type" not in root.attributes
    assert [e.name for e in root.events] == ["run_created", "run_started", "run_completed"]


def test_root_starts_at_creation_without_a_start() -> None:
    trace = run_trace(run_row(started_at=None), [], [], [], RETRIED[:1])
    assert trace.spans[0].start == us(0)
    assert trace.spans[0].name == "RUN nightly-build"


@pytest.mark.parametrize(
    ("status", "result", "error"),
    [
        ("succeeded", "success", None),
        ("failed", "failure", "failed"),
        ("partial", "failure", "partial"),
        ("quarantined", "error", "quarantined"),
        ("canceled", "cancellation", None),
    ],
)
def test_run_status_maps_to_the_pipeline_result(
    status: str, result: str, error: str | None
) -> None:
    """cicd.pipeline.result is one of the convention's values; a failure is an error span."""
    root = run_trace(run_row(status, tasks_failed=1), [], [], [], []).spans[0]
    assert root.attributes["cicd.pipeline.result"] == result
    assert root.attributes.get("error.type") == error
    assert root.status == ("error" if error else "unset")


def test_a_failed_run_says_why() -> None:
    events = [*RETRIED[:-1], ev(9, "run_failed", 100, reason="quota exceeded")]
    root = run_trace(run_row("failed"), [task_row()], [WORKSTREAM], [], events).spans[0]
    assert root.message == "quota exceeded"


def test_one_span_per_attempt_linked_to_the_previous() -> None:
    """Retries sit side by side; the second attempt points at the first, which failed."""
    first, second = by_name(retried_trace())["unit-tests"]
    assert (first.start, first.end, second.start, second.end) == (us(10), us(40), us(50), us(90))
    assert first.attributes["cicd.pipeline.task.run.id"] == "T1/1"
    assert second.attributes["cicd.pipeline.task.run.id"] == "T1/2"
    assert first.attributes["cicd.pipeline.task.run.result"] == "failure"
    assert second.attributes["cicd.pipeline.task.run.result"] == "success"
    assert first.kind == second.kind == "internal"
    assert second.links == (first.span_id,) and first.links == ()
    assert (first.status, first.message, first.attributes["error.type"]) == (
        "error",
        "pytest exited with 1",
        "failed",
    )
    assert first.events[-1].name == "exception"
    assert first.events[-1].attributes["exception.message"] == "pytest exited with 1"
    assert [e.name for e in second.events] == ["tool_call_completed"]


def test_workstream_groups_its_tasks_and_the_wait_is_a_span() -> None:
    spans = by_name(retried_trace())
    [workstream] = spans["WS-A"]
    root = retried_trace().spans[0]
    assert workstream.parent_id == root.span_id
    assert (workstream.start, workstream.end) == (us(10), us(90))
    assert {s.parent_id for s in spans["unit-tests"]} == {workstream.span_id}
    [wait] = spans["wait before first task"]
    assert (wait.parent_id, wait.start, wait.end) == (root.span_id, us(1), us(10))


def test_an_interrupted_attempt_and_one_open_at_the_end() -> None:
    """A start while an attempt is open ends that one as an error; an attempt still open
    when a canceled run ended was canceled."""
    events = [
        ev(1, "task_started", 10, "T1"),
        ev(2, "task_started", 20, "T1"),
        ev(3, "run_canceled", 100),
    ]
    trace = run_trace(
        run_row("canceled"), [task_row(status="running", workstream_id=None)], [], [], events
    )
    first, second = [s for s in trace.spans if s.name == "T1"]
    assert (first.end, first.attributes["cicd.pipeline.task.run.result"]) == (us(20), "error")
    assert first.attributes["error.type"] == "interrupted"
    assert (second.end, second.attributes["cicd.pipeline.task.run.result"]) == (
        us(100),
        "cancellation",
    )
    assert first.parent_id == trace.spans[0].span_id


def test_a_task_whose_events_are_gone_is_drawn_from_its_row() -> None:
    """History whose logs were rotated away still exports, from the projection's rows."""
    trace = run_trace(run_row(), [task_row(status="failed")], [WORKSTREAM], [], [], missing=9)
    [span] = [s for s in trace.spans if s.name == "T1"]
    assert (span.start, span.end) == (us(10), us(90))
    assert span.attributes["runwatch.task.attempt"] == 2
    assert span.attributes["cicd.pipeline.task.run.result"] == "failure"
    assert trace.spans[0].attributes["runwatch.run.events_missing"] == 9


def pattern(pattern_run: str, step: str | None, job: str | None, status: str) -> dict[str, Any]:
    return {
        "pattern_run_id": pattern_run,
        "pattern_id": "PAT-SEMGRP-001",
        "job_id": job,
        "step_id": step,
        "run_id": "R1",
        "status": status,
        "phase": "execution",
        "started_at": at(60),
        "finished_at": at(70),
        "duration_s": 10.0,
        "error_message": "semgrep crashed" if status == "failed" else None,
    }


def test_pattern_runs_sit_under_their_step_else_their_job_else_the_run() -> None:
    patterns = [
        pattern("P1", "T1", None, "succeeded"),
        pattern("P2", "STEP-X", "WS-A", "succeeded"),
        pattern("P3", None, None, "failed"),
    ]
    trace = run_trace(run_row(), [task_row()], [WORKSTREAM], patterns, RETRIED)
    found = {s.attributes.get("runwatch.pattern.run_id"): s for s in trace.spans}
    second_attempt = by_name(trace)["unit-tests"][1]
    assert found["P1"].parent_id == second_attempt.span_id, "running at 60 s: attempt 2"
    assert found["P2"].parent_id == span_id("R1", "workstream", "WS-A")
    assert found["P3"].parent_id == trace.spans[0].span_id
    assert (found["P3"].start, found["P3"].end) == (us(60), us(70))
    assert (found["P3"].status, found["P3"].message) == ("error", "semgrep crashed")
    assert found["P3"].events[0].name == "exception"
