"""What the simulated runs do: a deterministic plan from a seed.

`Planner.schedule()` says when each run starts and whether it stalls or uses the v1 shape;
`Planner.build_run()` then makes one run's lines, in time order, with the status a correct
projection must give it. Every random draw comes from one seeded generator in a fixed
order, so the same seed and options always plan the same bytes.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable, Iterable
from datetime import date
from random import Random
from typing import Any, Final, NamedTuple

import orjson

from runwatch.stream.devtools.expected import (
    RUN_COMPLETED_STATUSES,
    TASK_RANK,
    Record,
    project,
)

_S: Final = 1_000_000
_MIN: Final = 60 * _S
_HOUR: Final = 3600 * _S
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()

# Arrival gap chosen so that big corpora keep ~30-40 runs active at once (runs last ~20 min).
_RUN_GAP: Final = 30 * _S
_MIN_WINDOW: Final = 6 * _HOUR
# A stalled run goes quiet within this long of its start and starts early enough that the
# anchor run (created at the very end of the window) lies at least 2 h after its last event.
_STALL_SPAN: Final = 1 * _HOUR
_STALL_HEADROOM: Final = 3 * _HOUR + _MIN

_LEGACY_SHARE: Final = 0.2
_IMPLICIT_SHARE: Final = 0.15
_CANCEL_SHARE: Final = 0.04
_PATTERN_RUN_SHARE: Final = 0.5
_PATTERN_TASK_SHARE: Final = 0.35
_WORKSTREAM_EVENT_SHARE: Final = 0.5


# Where a line goes: the event-bus log, the v1 log, or the global pattern log.
ORCHESTRATOR, LEGACY, PATTERN = 0, 1, 2

_NO_TASK: Final = -1
# Event-bus lines that name the job; tool calls and progress leave it null, as upstream does.
_JOB_KINDS: Final = frozenset(
    {"task_created", "task_started", "task_completed", "task_failed", "task_cancelled"}
)

_B32: Final = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
)
_DUMPS: Final = orjson.dumps
_NL: Final = orjson.OPT_APPEND_NEWLINE

_WORKSTREAMS: Final = ("WS-A", "WS-B", "WS-C")
TOOLS: Final = ("git", "pytest", "ruff", "mypy", "aider", "semgrep", "fs", "llm")
FILES: Final = tuple(
    f"src/{pkg}/{mod}.py"
    for pkg in ("core", "api", "cli", "store")
    for mod in ("models", "service", "utils", "handlers")
)
_TASK_NAMES: Final = (
    "plan",
    "scaffold",
    "implement",
    "refactor",
    "lint",
    "typecheck",
    "unit-tests",
    "integration-tests",
    "docs",
    "review",
    "package",
    "migrate",
)
_TASK_ERRORS: Final = (
    "tool exited with status 1",
    "timeout after 300s",
    "patch did not apply cleanly",
    "tests failed: 3 of 42",
    "worker lost heartbeat",
)
# (pattern_id, operation_kind, tool, command)
_PATTERNS: Final = (
    ("PAT-SEMGRP-001", "semgrep_scan", "semgrep", "semgrep --config auto --severity medium+ src/"),
    ("PAT-PYTEST-001", "pytest_suite", "pytest", "pytest -q tests/"),
    ("PAT-RUFF-002", "ruff_lint", "ruff", "ruff check src/ tests/"),
    ("PAT-MYPY-001", "mypy_check", "mypy", "mypy --strict src/"),
    ("PAT-AIDER-003", "aider_refactor", "aider", "aider --yes --message-file task.md"),
)
MESSAGES: Final = {
    "run_created": "run created",
    "run_started": "run started",
    "run_completed": "run completed",
    "run_failed": "run failed",
    "run_cancelled": "run cancelled by operator",
    "workstream_started": "workstream started",
    "workstream_completed": "workstream completed",
    "workstream_failed": "workstream failed",
    "task_created": "task queued",
    "task_started": "task started",
    "task_progress": "task progress",
    "tool_call_started": "tool call started",
    "tool_call_completed": "tool call completed",
    "task_completed": "task completed",
    "task_failed": "task failed",
    "task_cancelled": "task cancelled",
}
# The v1 shape has no separate failure or cancel kinds: they become a status in the payload.
_LEGACY_KIND: Final = {
    "run_created": ("run_created", None),
    "run_started": ("run_started", None),
    "task_started": ("step_started", None),
    "task_completed": ("step_completed", "succeeded"),
    "task_failed": ("step_completed", "failed"),
    "task_cancelled": ("step_completed", "canceled"),
    "tool_call_started": ("tool_call_started", None),
    "tool_call_completed": ("tool_call_completed", None),
    "run_completed": ("run_completed", None),
    "run_failed": ("run_completed", "failed"),
    "run_cancelled": ("run_completed", "canceled"),
}

# (time, seq, kind, task index, workstream, payload, severity, tool_id, file_id)
_Ev = tuple[int, int, str, int, str | None, dict[str, Any], str, str | None, str | None]
# (time, sink, line)
TimedLine = tuple[int, int, bytes]


def make_ulid(rng: Random, us: int) -> str:
    """Crockford base32 ULID: 48-bit millisecond time + 80 bits from `rng`."""
    value = (us // 1000) << 80 | rng.getrandbits(80)
    return base64.b32encode(value.to_bytes(20, "big")).translate(_B32)[6:].decode()


class Stamper:
    """ISO-8601 times of epoch microseconds, with `suffix` as the zone; each day's date is
    formatted once."""

    def __init__(self) -> None:
        self._dates: dict[int, str] = {}

    def __call__(self, us: int, suffix: str) -> str:
        secs, frac = divmod(us, _S)
        days, secs = divmod(secs, 86400)
        day = self._dates.get(days)
        if day is None:
            day = self._dates[days] = date.fromordinal(_EPOCH_ORDINAL + days).isoformat()
        hours, secs = divmod(secs, 3600)
        minutes, secs = divmod(secs, 60)
        return f"{day}T{hours:02d}:{minutes:02d}:{secs:02d}.{frac:06d}{suffix}"


class PlannedRun(NamedTuple):
    """One run's lines in time order, the status a projection must reach, and its job's
    pattern lines (the job-scoped pattern file repeats them)."""

    run_id: str
    lines: list[TimedLine]
    status: str
    stalled: bool
    job_id: str
    job_lines: list[bytes]


def _abstract_records(events: Iterable[_Ev]) -> Iterable[Record]:
    for time, _seq, kind, task, _ws, payload, _sev, _tool, _file in events:
        if kind != "pattern":
            yield time, kind, (str(task) if task != _NO_TASK else None), payload


class Planner:
    """Plans `runs` runs from `seed`; call `schedule()` once, then `build_run()` for each
    scheduled run in schedule order (the draws must come in that order)."""

    def __init__(
        self,
        runs: int,
        seed: int,
        fail_rate: float,
        stall_rate: float,
        tasks_per_run: tuple[int, int],
        origin_us: int,
    ) -> None:
        self.runs = runs
        self.rng = Random(seed)
        self.fail_rate = fail_rate
        self.stall_rate = stall_rate
        self.tasks_per_run = tasks_per_run
        self.origin = origin_us
        self.stamp = Stamper()

    # -- identifiers and timestamps -----------------------------------------------------

    def ulid(self, us: int) -> str:
        return make_ulid(self.rng, us)

    # -- corpus --------------------------------------------------------------------------

    def schedule(self) -> list[tuple[int, int, bool, bool]]:
        """(start, index, stalled, legacy) per run, sorted by start time."""
        rng = self.rng
        count = self.runs
        window = max(_MIN_WINDOW, count * _RUN_GAP)
        plans = []
        for index in range(count):
            # The last run is created at the window's end and never stalls, so the corpus
            # always extends at least 2 h beyond every stalled run's last event.
            anchor = index == count - 1
            stalled = not anchor and rng.random() < self.stall_rate
            legacy = rng.random() < _LEGACY_SHARE
            if index == 0:
                offset = 0
            elif anchor:
                offset = window
            elif stalled:
                offset = rng.randrange(window - _STALL_HEADROOM)
            else:
                offset = rng.randrange(window)
            plans.append((self.origin + offset, index, stalled, legacy))
        plans.sort()
        return plans

    def build_run(self, start: int, stalled: bool, legacy: bool) -> PlannedRun:
        """One run as scheduled: its lines, its expected status, whether it went quiet."""
        rng = self.rng
        total = rng.randint(*self.tasks_per_run)
        width = min(total, rng.choice((2, 2, 3)))
        order = list(range(total))
        task_ws = [_WORKSTREAMS[i % width] for i in order]
        rng.shuffle(task_ws)
        failing = rng.random() < self.fail_rate
        canceled = not failing and not stalled and rng.random() < _CANCEL_SHARE
        implicit = not canceled and not stalled and rng.random() < _IMPLICIT_SHARE
        with_patterns = rng.random() < _PATTERN_RUN_SHARE
        ws_events = not legacy and rng.random() < _WORKSTREAM_EVENT_SHARE
        suffix = "Z" if rng.random() < 0.35 else "+00:00"
        final_fail: set[int] = set()
        if failing:
            if total == 1 or rng.random() < 0.25:
                final_fail = set(order)
            else:
                final_fail = set(rng.sample(order, rng.randint(1, max(1, (total - 1) // 2))))

        run_id = self.ulid(start) if legacy else "RUN-" + self.ulid(start)
        job_id = "JOB-" + self.ulid(start)
        task_ids = [self.ulid(start) if legacy else "TASK-" + self.ulid(start) for _ in order]
        step_ids = ["STEP-" + self.ulid(start) for _ in order]
        workers = [f"worker-{rng.randint(1, 24):02d}" for _ in order]
        events: list[_Ev] = []
        seq = itertools.count()

        def add(
            time: int,
            kind: str,
            task: int = _NO_TASK,
            ws: str | None = None,
            payload: dict[str, Any] | None = None,
            severity: str = "info",
            tool: str | None = None,
            file: str | None = None,
        ) -> None:
            events.append((time, next(seq), kind, task, ws, payload or {}, severity, tool, file))

        created: dict[str, Any] = {"total_tasks": total}
        if legacy:
            created = {"total_steps": total, "trigger": "schedule"}
        elif rng.random() < 0.3:
            created["total_steps"] = total
        add(start, "run_created", payload=created)
        started = start + rng.randint(200_000, 3 * _S)
        add(started, "run_started", payload={"workstreams": width})
        cursor = started
        for task in order:
            cursor += rng.randint(5_000, 400_000)
            if not legacy:
                name = _TASK_NAMES[task % len(_TASK_NAMES)]
                add(cursor, "task_created", task, task_ws[task], {"name": name, "index": task})
        if with_patterns and rng.random() < 0.2:
            # A job-level pattern: no step, as in the upstream samples.
            self.pattern_run(add, started + rng.randint(_S, 5 * _S), job_id, None, run_id, False)

        ws_end: list[int] = []
        for ws in _WORKSTREAMS[:width]:
            clock = cursor + rng.randint(_S, 20 * _S)
            if ws_events:
                add(clock, "workstream_started", ws=ws)
                clock += rng.randint(50_000, _S)
            for task in order:
                if task_ws[task] != ws:
                    continue
                clock = self.task(
                    add,
                    task,
                    ws,
                    clock,
                    task in final_fail,
                    legacy,
                    with_patterns,
                    job_id,
                    step_ids[task],
                    run_id,
                )
                clock += rng.randint(_S, 30 * _S)
            if ws_events:
                failed_here = any(task_ws[t] == ws for t in final_fail)
                add(clock, "workstream_failed" if failed_here else "workstream_completed", ws=ws)
            ws_end.append(clock)
        end = max(ws_end) + rng.randint(_S, 15 * _S)

        if stalled:
            events = self.stall(events, start, started, total)
        elif canceled:
            self.cancel(events, started, end, task_ws, add)
        elif not implicit:
            status, _ = project(_abstract_records(events))
            if failing and rng.random() < 0.35:
                add(end, "run_failed", payload={"reason": "tasks failed"}, severity="error")
            else:
                summary: dict[str, Any] = {"status": status}
                if rng.random() < 0.1:
                    # run_completed without a recognised status: projections must derive it.
                    summary = {"result": "done"} if rng.random() < 0.5 else {}
                add(end, "run_completed", payload=summary, severity="info")
        events.sort()
        outs, records, job_lines = self.serialise(
            events, legacy, run_id, job_id, task_ids, task_ws, workers, suffix
        )
        status, _ = project(records)
        quiet = stalled and status not in RUN_COMPLETED_STATUSES
        return PlannedRun(run_id, outs, status, quiet, job_id, job_lines)

    def task(
        self,
        add: Callable[..., None],
        task: int,
        ws: str,
        clock: int,
        final_fail: bool,
        legacy: bool,
        with_patterns: bool,
        job_id: str,
        step_id: str,
        run_id: str,
    ) -> int:
        rng = self.rng
        if final_fail:
            # The v1 shape has one step_attempt_id per task, so legacy runs never retry.
            outcomes = [True, True] if not legacy and rng.random() < 0.3 else [True]
        elif not legacy and rng.random() < 0.08:
            outcomes = [True, False]
        else:
            outcomes = [False]
        random = rng.random
        for attempt, fails in enumerate(outcomes, start=1):
            if attempt > 1:
                clock += rng.randint(5 * _S, 90 * _S)
            add(clock, "task_started", task, ws, {"attempt": attempt})
            steps = rng.randint(8, 17)
            pattern_at = -1
            if with_patterns and random() < _PATTERN_TASK_SHARE:
                pattern_at = rng.randrange(steps)
            # random() scaled to ints: randint is the generator's hottest cost on big corpora.
            for step in range(steps):
                clock += _S + int(random() * 29 * _S)
                if step == pattern_at:
                    clock = self.pattern_run(add, clock, job_id, step_id, run_id, fails, task)
                elif random() < 0.3:
                    if not legacy:
                        pct = (step + 1) * 100 // (steps + 1)
                        add(clock, "task_progress", task, ws, {"percent": pct, "step": step + 1})
                else:
                    tool = TOOLS[int(random() * len(TOOLS))]
                    file = FILES[int(random() * len(FILES))] if random() < 0.5 else None
                    call = step + 1
                    add(clock, "tool_call_started", task, ws, {"call": call}, "info", tool, file)
                    took = 200_000 + int(random() * 25 * _S)
                    clock += took
                    ok = random() >= 0.05
                    result = {"call": call, "exit_code": int(not ok), "duration_ms": took // 1000}
                    severity = "info" if ok else "error" if random() < 0.3 else "warning"
                    add(clock, "tool_call_completed", task, ws, result, severity, tool, file)
            clock += rng.randint(_S, 10 * _S)
            if fails:
                error = _TASK_ERRORS[rng.randrange(len(_TASK_ERRORS))]
                add(clock, "task_failed", task, ws, {"attempt": attempt, "error": error}, "error")
            else:
                add(clock, "task_completed", task, ws, {"attempt": attempt, "exit_code": 0})
        return clock

    def pattern_run(
        self,
        add: Callable[..., None],
        clock: int,
        job_id: str,
        step_id: str | None,
        run_id: str,
        fails: bool,
        task: int = _NO_TASK,
    ) -> int:
        """Pattern lifecycle events; all but the execution outcome share one timestamp."""
        rng = self.rng
        pattern_id, kind, tool, command = _PATTERNS[rng.randrange(len(_PATTERNS))]
        prun = "PRUN-" + self.ulid(clock)

        def emit(time: int, phase: str, status: str, **details: Any) -> None:
            details["run_id"] = run_id
            line = {
                "event_id": "EVT-" + self.ulid(time),
                "event_type": "pattern." + phase,
                "timestamp": None,
                "job_id": job_id,
                "pattern_run_id": prun,
                "pattern_id": pattern_id,
                "status": status,
                "details": details,
                "step_id": step_id,
            }
            add(time, "pattern", task, None, line)

        context = {"tool": tool, "language": "python"}
        emit(clock, "selection.started", "in_progress", operation_kind=kind, context=context,
             candidate_patterns=[pattern_id])  # fmt: skip
        if rng.random() < 0.03:
            error = f"no enabled pattern matches operation {kind}"
            emit(clock, "selection.failed", "failed", operation_kind=kind, reason="no_match",
                 attempted_patterns=[pattern_id], error=error, error_message=error)  # fmt: skip
            return clock
        method = ("auto", "auto", "explicit", "fallback")[rng.randrange(4)]
        emit(clock, "selection.resolved", "in_progress", operation_kind=kind,
             pattern_id=pattern_id, selection_method=method,
             inputs_preview={"target_paths": ["src/", "tests/"]})  # fmt: skip
        emit(clock, "template.expanded", "in_progress", template_version="1.2.0",
             variables_resolved=rng.randint(3, 16),
             generated_artifacts=[f".worktrees/{job_id}/run_{tool}.sh"],
             command_preview=command)  # fmt: skip
        checks = ["tool_availability", "target_paths_exist", "config_file_valid"]
        emit(clock, "validation.started", "in_progress", validation_type="preflight", checks=checks)
        if rng.random() < 0.03:
            error = f"{tool} not found on PATH"
            emit(clock, "validation.failed", "failed", validation_type="preflight",
                 checks_passed=2, checks_failed=1,
                 failed_checks=[{"check": "tool_availability", "error": error}],
                 error_message=error)  # fmt: skip
            return clock
        emit(clock, "validation.completed", "in_progress", validation_type="preflight",
             checks_passed=3, checks_failed=0, warnings=[])  # fmt: skip
        emit(clock, "execution.started", "in_progress", executor="subprocess", command=command,
             working_dir=f".worktrees/{job_id}", timeout_seconds=300)  # fmt: skip
        duration = rng.randint(150, 6000) / 100
        finished = clock + int(duration * _S)
        if fails:
            emit(finished, "execution.failed", "failed", exit_code=1, duration_seconds=duration,
                 error_type="NonZeroExit", error_message=f"{tool} exited with status 1",
                 stderr_preview=f"{tool}: error: see report")  # fmt: skip
        else:
            roll = rng.random()
            status = "success" if roll < 0.85 else "warning" if roll < 0.97 else "skipped"
            summary = {
                "finding_count": rng.randint(1, 20) if status == "warning" else 0,
                "files_scanned": rng.randint(5, 90),
            }
            emit(finished, "execution.completed", status, exit_code=0,
                 duration_seconds=duration, result_summary=summary,
                 stdout_lines=rng.randint(5, 300), stderr_lines=rng.randint(0, 4))  # fmt: skip
        return finished

    def stall(self, events: list[_Ev], start: int, started: int, total: int) -> list[_Ev]:
        """Cut a run short after a few tasks so that no terminal state is reachable."""
        rng = self.rng
        events.sort()
        if rng.random() < 0.1:
            # Stops right after run_created: a projection must call it pending.
            return [ev for ev in events if ev[0] <= start]
        finals = sorted(
            max(ev[0] for ev in events if ev[3] == task and ev[2] in TASK_RANK)
            for task in range(total)
        )
        done = rng.randint(1, min(3, total - 1)) if total > 1 else 0
        low = finals[done - 1] if done else started
        cut = min(low + int(rng.random() * (finals[done] - low)), start + _STALL_SPAN)
        kept = [ev for ev in events if ev[0] <= cut]
        status, _ = project(_abstract_records(kept))
        if status in RUN_COMPLETED_STATUSES:
            kept = [ev for ev in events if ev[0] <= started]
        return kept

    def cancel(
        self,
        events: list[_Ev],
        started: int,
        end: int,
        task_ws: list[str],
        add: Callable[..., None],
    ) -> None:
        """Cut a run (in place) at a random moment and cancel whatever was in flight."""
        rng = self.rng
        events.sort()
        cut = started + _S + int(rng.random() * max(1, end - started - _S))
        events[:] = [ev for ev in events if ev[0] <= cut]
        _, tasks = project(_abstract_records(events))
        clock = cut
        for key, status in sorted(tasks.items(), key=lambda item: int(item[0])):
            if status == "running":
                clock += rng.randint(1000, 200_000)
                task = int(key)
                add(
                    clock,
                    "task_cancelled",
                    task,
                    task_ws[task],
                    {"reason": "run cancelled"},
                    "warning",
                )
        add(
            clock + rng.randint(_S, 3 * _S),
            "run_cancelled",
            payload={"by": "operator"},
            severity="warning",
        )

    def serialise(
        self,
        events: list[_Ev],
        legacy: bool,
        run_id: str,
        job_id: str,
        task_ids: list[str],
        task_ws: list[str],
        workers: list[str],
        suffix: str,
    ) -> tuple[list[TimedLine], list[Record], list[bytes]]:
        outs: list[TimedLine] = []
        records: list[Record] = []
        job_lines: list[bytes] = []
        stamp = self.stamp
        for time, _seq, kind, task, ws, payload, severity, tool, file in events:
            if kind == "pattern":
                payload["timestamp"] = stamp(time, "+00:00")
                line = _DUMPS(payload, option=_NL)
                outs.append((time, PATTERN, line))
                job_lines.append(line)
                continue
            task_id = task_ids[task] if task != _NO_TASK else None
            if legacy:
                mapped = _LEGACY_KIND.get(kind)
                if mapped is None:
                    continue
                kind, status = mapped
                if status is not None:
                    payload = {"status": status, **payload}
                line = _DUMPS(
                    {
                        "event_id": self.ulid(time),
                        "run_id": run_id,
                        "ts": stamp(time, suffix),
                        "kind": kind,
                        "step_attempt_id": task_id,
                        "payload": payload,
                    },
                    option=_NL,
                )
                outs.append((time, LEGACY, line))
            else:
                if ws is None and task != _NO_TASK:
                    ws = task_ws[task]
                line = _DUMPS(
                    {
                        "event_type": kind,
                        "timestamp": stamp(time, suffix),
                        "severity": severity,
                        "message": MESSAGES[kind],
                        "run_id": run_id,
                        "workstream_id": ws,
                        "job_id": job_id if kind in _JOB_KINDS else None,
                        "task_id": task_id,
                        "tool_id": tool,
                        "worker_id": workers[task] if task != _NO_TASK else None,
                        "file_id": file,
                        "payload": payload,
                    },
                    option=_NL,
                )
                outs.append((time, ORCHESTRATOR, line))
            records.append((time, kind, task_id, payload))
        return outs, records, job_lines
