"""A finished run as an OpenTelemetry trace by the CI/CD semantic conventions: plain span
descriptions from the run's rows and its events. Pure: the same rows and events always give
the same spans, ids and times included, so a re-export or an export from a rebuilt database
sends exactly what the first one sent.

Ids: the trace id is the first 16 bytes of SHA-256 of `"runwatch/" + run_id`; a span id is
the first 8 bytes of SHA-256 of `"runwatch/" + run_id` followed by NUL-separated parts naming
the span (`run`; `wait`; `workstream, ID`; `task, ID, N` for attempt N; `pattern, ID`). NUL
cannot occur in an accepted event's ids, so no two spans share a name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Final, Literal

from .events import to_micros
from .lifecycle import STEP_STATUS, TASK_LIFECYCLE, TASK_START

Attributes = dict[str, str | int | float | bool]
Row = Mapping[str, Any]

PIPELINE_RESULT: Final = {
    "succeeded": "success",
    "failed": "failure",
    "partial": "failure",
    "quarantined": "error",
    "canceled": "cancellation",
}
"""Run status → `cicd.pipeline.result`. A quarantined run was stopped by the system, not
by a failing task: `error`."""
TASK_RESULT: Final = {
    "succeeded": "success",
    "failed": "failure",
    "skipped": "skip",
    "canceled": "cancellation",
}
FAILED_RESULTS: Final = frozenset({"failure", "error", "timeout"})
PIPELINE_NAME_KEYS: Final = ("pipeline_name", "pipeline", "phase_name", "phase")
"""Payload keys of run-level events that name the pipeline, in order of preference."""
ERROR_KEYS: Final = ("error_message", "error", "message", "reason", "exception")
MAX_TEXT: Final = 4096
"""Longest message kept in a span's status or exception event."""


@dataclass(frozen=True, slots=True)
class SpanEvent:
    name: str
    time: int
    """UTC microseconds."""
    attributes: Attributes = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Span:
    """One span, ready for any exporter. Times are UTC microseconds."""

    name: str
    span_id: int
    parent_id: int | None
    kind: Literal["server", "internal"]
    start: int
    end: int
    attributes: Attributes
    status: Literal["unset", "error"] = "unset"
    message: str | None = None
    events: tuple[SpanEvent, ...] = ()
    links: tuple[int, ...] = ()
    """Span ids (of the same trace) this span follows: an attempt links its predecessor."""


@dataclass(frozen=True, slots=True)
class Trace:
    run_id: str
    trace_id: int
    spans: tuple[Span, ...]


def trace_id(run_id: str) -> int:
    return _id(run_id, (), 16)


def span_id(run_id: str, *parts: str) -> int:
    return _id(run_id, parts, 8)


def _id(run_id: str, parts: Sequence[str], size: int) -> int:
    text = "\0".join(["runwatch/" + run_id, *parts])
    digest = hashlib.sha256(text.encode()).digest()
    # An all-zero id is invalid in OTLP; the next bytes stand in (a 2^-64 chance).
    return int.from_bytes(digest[:size]) or int.from_bytes(digest[size : 2 * size])


def micros(text: str | None) -> int | None:
    """A stored time (`YYYY-MM-DDTHH:MM:SS.ffffffZ`, read by position: a run has thousands)
    → UTC microseconds; any other ISO-8601 form is parsed in full."""
    if text is None:
        return None
    if len(text) != 27 or text[10] != "T" or text[26] != "Z":
        return to_micros(datetime.fromisoformat(text))
    return (
        _day_micros(text[:10])
        + int(text[11:13]) * 3_600_000_000
        + int(text[14:16]) * 60_000_000
        + int(text[17:19]) * 1_000_000
        + int(text[20:26])
    )


@lru_cache(maxsize=4096)
def _day_micros(day: str) -> int:
    return to_micros(datetime.fromisoformat(day))


@dataclass(slots=True)
class _Attempt:
    number: int
    start: int
    end: int | None = None
    result: str | None = None
    error_type: str | None = None
    message: str | None = None
    events: list[SpanEvent] = field(default_factory=list)


def run_trace(
    run: Row,
    tasks: Sequence[Row],
    workstreams: Sequence[Row],
    pattern_runs: Sequence[Row],
    events: Sequence[Row],
    *,
    missing: int = 0,
) -> Trace:
    """The trace of a finished run from its rows (as `reads.run_detail` gives them) and its
    events (`{id, type, time, severity, task_id, workstream_id, payload}`, stored time
    strings). A task whose events are gone (`missing` counts them) is drawn from its row."""
    run_id = str(run["run_id"])
    start = micros(run["started_at"]) or micros(run["created_at"]) or 0
    end = max(micros(run["ended_at"]) or micros(run["last_event_at"]) or start, start)
    by_task: dict[str, list[Row]] = {}
    by_workstream: dict[str, list[Row]] = {}
    run_level: list[Row] = []
    for event in sorted(events, key=_lifecycle_key):
        if event["task_id"] is not None:
            by_task.setdefault(event["task_id"], []).append(event)
        elif event["workstream_id"] is not None:
            by_workstream.setdefault(event["workstream_id"], []).append(event)
        else:
            run_level.append(event)
    root = span_id(run_id, "run")
    spans: list[Span] = []
    attempts_of: dict[str, list[tuple[_Attempt, int]]] = {}
    for task in tasks:
        task_id = str(task["task_id"])
        attempts = _attempts(by_task.get(task_id, []), task, run["status"], end)
        workstream = task["workstream_id"]
        parent = root if workstream is None else span_id(run_id, "workstream", workstream)
        made = _attempt_spans(run_id, task, by_task.get(task_id, []), attempts, parent)
        attempts_of[task_id] = [(a, s.span_id) for a, s in zip(attempts, made, strict=True)]
        spans.extend(made)
    spans.extend(_workstream_spans(run_id, workstreams, spans, by_workstream, root))
    spans.extend(_pattern_spans(run_id, pattern_runs, attempts_of, workstreams, root, end))
    first = min((a.start for pairs in attempts_of.values() for a, _ in pairs), default=None)
    if first is not None and first > start:
        wait = span_id(run_id, "wait")
        attributes: Attributes = {"cicd.pipeline.run.id": run_id}
        spans.append(
            Span("wait before first task", wait, root, "internal", start, first, attributes)
        )
    spans.insert(0, _root_span(run, run_id, root, start, end, run_level, missing))
    return Trace(run_id, trace_id(run_id), tuple(spans))


def _root_span(
    run: Row, run_id: str, root: int, start: int, end: int, events: list[Row], missing: int
) -> Span:
    status = str(run["status"])
    result = PIPELINE_RESULT.get(status, "error")
    pipeline = _first_text(events, PIPELINE_NAME_KEYS)
    attributes: Attributes = {
        "cicd.pipeline.run.id": run_id,
        "cicd.pipeline.action.name": "RUN",
        "cicd.pipeline.result": result,
        "runwatch.run.status": status,
        "runwatch.run.tasks_total": int(run["tasks_total"]),
        "runwatch.run.tasks_failed": int(run["tasks_failed"]),
        "runwatch.run.events_total": int(run["events_total"]),
    }
    if pipeline is not None:
        attributes["cicd.pipeline.name"] = pipeline
    if missing:
        attributes["runwatch.run.events_missing"] = missing
    message = None
    if result in FAILED_RESULTS:
        attributes["error.type"] = status
        ending = [e for e in events if e["type"] in _RUN_ENDINGS]
        message = _error_text(ending[-1]["payload"]) if ending else None
        message = message or f"{run['tasks_failed']} of {run['tasks_total']} tasks failed"
    return Span(
        f"RUN {pipeline}" if pipeline else "RUN",
        root,
        None,
        "server",
        start,
        end,
        attributes,
        "error" if message else "unset",
        message,
        tuple(_noted(e) for e in events),
    )


_RUN_ENDINGS: Final = frozenset(
    {"run_completed", "run_failed", "run_quarantined", "run_canceled", "run_cancelled"}
)


def _lifecycle_key(event: Row) -> tuple[str, int, str]:
    """Events in the order the projections judge "latest": (time, rank, id)."""
    rank = TASK_LIFECYCLE.get(event["type"], (2, None))[0]
    return event["time"], rank, event["id"]


def _attempts(events: list[Row], task: Row, run_status: str, run_end: int) -> list[_Attempt]:
    """`events` in (time, rank, id) order. Each start event opens an attempt; a terminal
    event closes the open one (or, late, changes the last one's outcome, as it changes the
    task's status). A start while an attempt is open ends that one as an `error` (it was
    interrupted). Without events the task's row stands for its last attempt."""
    if not events:
        return _from_row(task)
    attempts: list[_Attempt] = []
    current: _Attempt | None = None
    for event in events:
        time = micros(event["time"]) or 0
        lifecycle = TASK_LIFECYCLE.get(event["type"])
        if event["type"] in TASK_START:
            if current is not None:
                _close(current, time, "error", "interrupted", "a new attempt started")
            current = _Attempt(len(attempts) + 1, time)
            attempts.append(current)
        elif lifecycle is not None and lifecycle[0] == 3:
            status = lifecycle[1] or STEP_STATUS.get(event["payload"].get("status"), "failed")
            target = current or (attempts[-1] if attempts else None)
            if target is None:  # ended without starting (skipped, canceled before its turn)
                target = _Attempt(1, time)
                attempts.append(target)
            result = TASK_RESULT[status]
            message = _error_text(event["payload"]) if result in FAILED_RESULTS else None
            _close(target, time, result, status if result in FAILED_RESULTS else None, message)
            if message is not None:
                target.events.append(_exception(event, message, time))
            current = None
        elif attempts:
            (current or attempts[-1]).events.append(_noted(event))
    if current is not None:  # still open when the run ended
        if run_status == "canceled":
            _close(current, max(run_end, current.start), "cancellation", None, None)
        else:
            _close(current, max(run_end, current.start), "error", "unfinished", None)
    return attempts


def _close(
    attempt: _Attempt, time: int, result: str, error_type: str | None, message: str | None
) -> None:
    attempt.end, attempt.result = time, result
    attempt.error_type, attempt.message = error_type, message


def _from_row(task: Row) -> list[_Attempt]:
    start = micros(task["started_at"])
    end = micros(task["ended_at"])
    if start is None and end is None:
        return []
    number = max(int(task["attempts"]), 1)
    result = TASK_RESULT.get(task["status"])
    failed = result in FAILED_RESULTS
    attempt = _Attempt(number, start if start is not None else end or 0)
    error_type = task["status"] if failed else None if result else "unfinished"
    _close(attempt, end or attempt.start, result or "error", error_type, None)
    return [attempt]


def _attempt_spans(
    run_id: str, task: Row, events: list[Row], attempts: list[_Attempt], parent: int
) -> list[Span]:
    task_id = str(task["task_id"])
    lifecycle = [event for event in events if event["type"] in TASK_LIFECYCLE]
    name = _first_text(lifecycle, ("name", "task_name")) or task_id
    spans: list[Span] = []
    previous: int | None = None
    for attempt in attempts:
        own = span_id(run_id, "task", task_id, str(attempt.number))
        attributes: Attributes = {
            "cicd.pipeline.task.name": name,
            "cicd.pipeline.task.run.id": f"{task_id}/{attempt.number}",
            "cicd.pipeline.task.run.result": attempt.result or "error",
            "cicd.pipeline.run.id": run_id,
            "runwatch.task.id": task_id,
            "runwatch.task.attempt": attempt.number,
        }
        if task["workstream_id"] is not None:
            attributes["runwatch.workstream.id"] = str(task["workstream_id"])
        failed = attempt.error_type is not None
        if failed:
            attributes["error.type"] = str(attempt.error_type)
        spans.append(
            Span(
                name,
                own,
                parent,
                "internal",
                attempt.start,
                max(attempt.end or attempt.start, attempt.start),
                attributes,
                "error" if failed else "unset",
                attempt.message or attempt.error_type if failed else None,
                tuple(attempt.events),
                () if previous is None else (previous,),
            )
        )
        previous = own
    return spans


def _workstream_spans(
    run_id: str,
    workstreams: Sequence[Row],
    made: list[Span],
    events: dict[str, list[Row]],
    root: int,
) -> list[Span]:
    """A workstream spans its tasks' attempts and its own events."""
    bounds: dict[int | None, tuple[int, int]] = {}
    for span in made:
        low, high = bounds.get(span.parent_id, (span.start, span.end))
        bounds[span.parent_id] = (min(low, span.start), max(high, span.end))
    spans = []
    for row in workstreams:
        workstream = str(row["workstream_id"])
        own = span_id(run_id, "workstream", workstream)
        mine = events.get(workstream, [])
        times = [micros(e["time"]) or 0 for e in mine]
        times += bounds.get(own, ())
        if not times:
            continue
        status = str(row["status"])
        failed = status == "failed"
        attributes: Attributes = {
            "cicd.pipeline.run.id": run_id,
            "runwatch.workstream.id": workstream,
            "runwatch.workstream.status": status,
            "runwatch.workstream.tasks_total": int(row["tasks_total"]),
            "runwatch.workstream.tasks_failed": int(row["tasks_failed"]),
        }
        if failed:
            attributes["error.type"] = status
        spans.append(
            Span(
                workstream,
                own,
                root,
                "internal",
                min(times),
                max(times),
                attributes,
                "error" if failed else "unset",
                f"{row['tasks_failed']} of {row['tasks_total']} tasks failed" if failed else None,
                tuple(_noted(e) for e in mine),
            )
        )
    return spans


def _pattern_spans(
    run_id: str,
    pattern_runs: Sequence[Row],
    attempts_of: dict[str, list[tuple[_Attempt, int]]],
    workstreams: Sequence[Row],
    root: int,
    run_end: int,
) -> list[Span]:
    """A pattern run sits under the attempt of its step that was running when it started
    (its `step_id` is a task of the run), else under its job's workstream, else the run."""
    workstream_ids = {str(row["workstream_id"]) for row in workstreams}
    spans = []
    for row in pattern_runs:
        start = micros(row["started_at"])
        if start is None:
            continue
        end = max(micros(row["finished_at"]) or run_end, start)
        parent = root
        if row["step_id"] in attempts_of and attempts_of[row["step_id"]]:
            parent = _attempt_at(attempts_of[row["step_id"]], start)
        elif row["job_id"] in workstream_ids:
            parent = span_id(run_id, "workstream", str(row["job_id"]))
        attributes: Attributes = {"cicd.pipeline.run.id": run_id}
        for key in ("pattern_run_id", "pattern_id", "status", "phase", "step_id", "job_id"):
            if row[key] is not None:
                attributes[f"runwatch.pattern.{key.removeprefix('pattern_')}"] = str(row[key])
        if row["duration_s"] is not None:
            attributes["runwatch.pattern.duration_s"] = float(row["duration_s"])
        failed = row["status"] == "failed"
        message = _clip(str(row["error_message"] or "pattern run failed")) if failed else None
        if failed:
            attributes["error.type"] = f"{row['phase']}_failed" if row["phase"] else "failed"
        spans.append(
            Span(
                f"pattern {row['pattern_id']}" if row["pattern_id"] else "pattern",
                span_id(run_id, "pattern", str(row["pattern_run_id"])),
                parent,
                "internal",
                start,
                end,
                attributes,
                "error" if failed else "unset",
                message,
                (_exception_at(end, str(attributes["error.type"]), message),) if message else (),
            )
        )
    return spans


def _attempt_at(attempts: list[tuple[_Attempt, int]], time: int) -> int:
    """The attempt running at `time`, else the last one started before it, else the first."""
    chosen = attempts[0][1]
    for attempt, own in attempts:
        if attempt.start <= time:
            chosen = own
            if attempt.end is None or time <= attempt.end:
                return own
    return chosen


def _noted(event: Row) -> SpanEvent:
    """An event as a span event: its id (to find its line), its severity unless `info`
    (every attribute costs a run's export time: tool calls are most of a run's events)."""
    attributes: Attributes = {"runwatch.event.id": event["id"]}
    if event["severity"] != "info":
        attributes["runwatch.event.severity"] = event["severity"]
    return SpanEvent(event["type"], micros(event["time"]) or 0, attributes)


def _exception(event: Row, message: str, time: int) -> SpanEvent:
    payload = event["payload"]
    kind = payload.get("error_type") or payload.get("exception_type") or event["type"]
    return _exception_at(time, str(kind), message)


def _exception_at(time: int, kind: str, message: str) -> SpanEvent:
    return SpanEvent("exception", time, {"exception.type": kind, "exception.message": message})


def _first_text(events: Sequence[Row], keys: Sequence[str]) -> str | None:
    """The first non-empty string under one of `keys` in the events' payloads (events in
    order; for each event, keys in order)."""
    for event in events:
        payload = event["payload"]
        for key in keys:
            value = payload.get(key)
            if isinstance(value, str) and value.strip():
                return _clip(value.strip())
    return None


def _error_text(payload: Mapping[str, Any]) -> str | None:
    for key in ERROR_KEYS:
        value = payload.get(key)
        if isinstance(value, dict):
            value = value.get("message")
        if isinstance(value, str) and value.strip():
            return _clip(value.strip())
    return None


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"
