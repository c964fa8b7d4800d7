"""Runs, tasks and workstreams folded from orchestrator events (contract §2).

A `RunState` is a join-semilattice (a state-based CRDT): every field is a min, a max, a set
of event ids, or a latest-wins value under the key `(time, rank, id)`. So `apply` is
idempotent and commutative, and `merge` of two partial states equals folding the union of
their events; that is what lets replay fold file chunks in parallel. Both update the state in
place: copying a run per event would cost more than the whole per-event budget. No I/O and no
clock here.

A run's rows come from counts kept in step with every change (tasks per status, per
workstream and status, errors, the latest task end), so producing them costs the same for a
run of ten tasks and one of two hundred thousand; and its state is saved in parts (a small
`header` plus one entry per task), so a commit writes only the tasks that changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from .events import DerivedEvent, Event, format_time
from .lifecycle import (
    KINDS,
    RUN_EXPLICIT_END,
    STEP_STATUS,
    classify,
)
from .tasks import TASK_TERMINAL, Key, TaskState

RUN_TERMINAL: Final = frozenset({"succeeded", "failed", "partial", "quarantined", "canceled"})
TASK_STATUSES: Final = ("pending", "running", "succeeded", "failed", "skipped", "canceled")

_ERROR_SEVERITIES: Final = frozenset({"error", "critical"})
TRACK_IDS_FROM: Final = 1_000
"""Tasks from which a run keeps each task's event ids with it, so that they can leave memory
with the task when the run grows big (`retire`); the ids of its first tasks stay."""


class RunState:
    """Everything needed to produce one run's rows, plus what was last reported about it."""

    __slots__ = (
        "_ended_max",
        "_ended_stale",
        "abandoned",
        "counts",
        "created_at",
        "declared_total",
        "dirty_tasks",
        "dirty_workstreams",
        "error_ids",
        "errors",
        "explicit_key",
        "explicit_status",
        "last_event_at",
        "reported_events",
        "reported_status",
        "retired_end",
        "retired_events",
        "retired_tasks",
        "run_id",
        "seen",
        "stalled",
        "started_at",
        "task_events",
        "tasks",
        "workstream_counts",
        "workstreams",
    )

    def __init__(self, run_id: str, seen: set[str] | None = None) -> None:
        self.run_id = run_id
        self.seen: set[str] = set() if seen is None else seen
        self.created_at: int | None = None
        self.last_event_at: int | None = None
        self.started_at: int | None = None
        self.errors = 0
        # The error events' ids, which a merge into another state needs; None once only
        # the count is kept (a restored or stored state is merged into, never out).
        self.error_ids: set[str] | None = set()
        self.declared_total = 0
        self.explicit_key: Key | None = None
        self.explicit_status = ""
        self.tasks: dict[str, TaskState] = {}
        self.workstreams: dict[str, tuple[Key, str] | None] = {}
        self.counts = dict.fromkeys(TASK_STATUSES, 0)
        self.workstream_counts: dict[str, dict[str, int]] = {}
        self._ended_max: int | None = None  # the latest end of a terminal task
        self._ended_stale = False  # a task left a terminal status: recount when asked
        # Arrival-dependent bookkeeping for derived events; not part of the converged rows.
        self.reported_status = "pending"
        self.reported_events = 0  # events_total when `observe` last ran
        self.stalled = False
        self.abandoned = False  # silent past forget_after; any new event clears it
        self.dirty_tasks: set[str] = set()
        self.dirty_workstreams: set[str] = set()
        # A big run's finished tasks may leave memory (`retire`); the rows still count them.
        self.retired_tasks = 0
        self.retired_events = 0  # ids that left `seen` with their tasks
        self.retired_end: int | None = None  # the latest end among the retired tasks
        self.task_events: dict[str, list[str]] | None = None  # each task's ids, once big

    def apply(self, e: Event) -> bool:
        """Fold one orchestrator event of this run in; False (and no change) for a duplicate."""
        # The hot path of replay: one type-table lookup replaces the string tests.
        eid = e.id
        seen = self.seen
        if eid in seen:
            return False
        seen.add(eid)
        self.abandoned = False
        t = e.time
        if self.created_at is None or t < self.created_at:
            self.created_at = t
        if self.last_event_at is None or t > self.last_event_at:
            self.last_event_at = t
        kind = KINDS.get(e.type) or classify(e.type)
        failed, run_level, workstream_level, lifecycle, rank, task_status, task_start = kind
        if failed or e.severity in _ERROR_SEVERITIES:
            self.errors += 1
            if self.error_ids is not None:
                self.error_ids.add(eid)
        ws = e.workstream
        if ws is not None and ws not in self.workstreams:
            self.workstreams[ws] = None  # every workstream named gets a row
            self.dirty_workstreams.add(ws)
        task_id = e.task
        if task_id is not None:
            task = self.tasks.get(task_id)
            if task is None:
                task = self.tasks[task_id] = TaskState()
                self.counts["pending"] += 1
                if self.task_events is None and len(self.tasks) >= TRACK_IDS_FROM:
                    self.task_events = {}
            self.dirty_tasks.add(task_id)
            if self.task_events is not None:  # a big run: no list made per event
                ids = self.task_events.get(task_id)
                if ids is None:
                    self.task_events[task_id] = [eid]
                else:
                    ids.append(eid)
            status, member = task.status, task.workstream
            key = (t, rank, eid)
            if ws is not None and (task.workstream_key is None or key > task.workstream_key):
                task.workstream_key = key
                task.workstream = ws
            if rank >= 0:
                if task_start:
                    task.starts += (eid,)  # new: apply refuses a repeat above
                    if task.started_at is None or t < task.started_at:
                        task.started_at = t
                    if self.started_at is None or t < self.started_at:
                        self.started_at = t
                if task.key is None or key > task.key:
                    task.key = key
                    task.status = task_status or STEP_STATUS.get(
                        str(e.payload.get("status")), "failed"
                    )
                    self._note_end(task, status in TASK_TERMINAL)
            if task.status != status or task.workstream != member:
                self._recount(status, member, task)
        if run_level:
            self._apply_run_level(e)
        elif workstream_level and ws is not None:
            self._apply_workstream_level(e, ws, lifecycle)
        return True

    def merge(self, other: RunState) -> None:
        """Join a partial state of the same run, folded in memory from other events (not
        restored: it brings its error ids; whole: none of its tasks retired), into this one."""
        if other.error_ids is None or other.retired_tasks:
            raise ValueError(f"run {other.run_id}: only a whole state folded in memory merges")
        new_errors = other.error_ids - self.seen
        self.errors += len(new_errors)
        if self.error_ids is not None:
            self.error_ids |= new_errors
        self.seen |= other.seen
        if other.seen:
            self.abandoned = False
        self.created_at = _min(self.created_at, other.created_at)
        self.started_at = _min(self.started_at, other.started_at)
        if other.last_event_at is not None and (
            self.last_event_at is None or other.last_event_at > self.last_event_at
        ):
            self.last_event_at = other.last_event_at
        self.declared_total = max(self.declared_total, other.declared_total)
        if other.explicit_key is not None and (
            self.explicit_key is None or other.explicit_key > self.explicit_key
        ):
            self.explicit_key, self.explicit_status = other.explicit_key, other.explicit_status
        for task_id, task in other.tasks.items():
            mine = self.tasks.get(task_id)
            if mine is None:
                self.tasks[task_id] = task
                self._recount(None, None, task)
                self._note_end(task, False)
            else:
                status, member = mine.status, mine.workstream
                mine.merge(task)
                if mine.status != status or mine.workstream != member:
                    self._recount(status, member, mine)
                self._note_end(mine, status in TASK_TERMINAL)
            self.dirty_tasks.add(task_id)
        for ws, explicit in other.workstreams.items():
            current = self.workstreams.get(ws)
            if current is None or (explicit is not None and explicit[0] > current[0]):
                self.workstreams[ws] = explicit
            self.dirty_workstreams.add(ws)
        self.dirty_tasks |= other.dirty_tasks & self.tasks.keys()
        self.dirty_workstreams |= other.dirty_workstreams & self.workstreams.keys()

    def mark_changed(self, other: RunState) -> None:
        """Mark the tasks and workstreams of `other` changed here, and wherever this state
        is merged: their rows are written again, over rows written from `other`."""
        self.dirty_tasks.update(other.tasks)
        self.dirty_workstreams.update(other.workstreams)

    def _recount(self, status: str | None, member: str | None, task: TaskState) -> None:
        """Move `task` in the counts from (`status`, `member`), where it was (None: nowhere
        yet), to its status and workstream now."""
        counts = self.counts
        if status is not None:
            counts[status] -= 1
        counts[task.status] += 1
        by_workstream = self.workstream_counts
        if member is not None and status is not None:
            by_workstream[member][status] -= 1
            self.dirty_workstreams.add(member)
        ws = task.workstream
        if ws is not None:
            mine = by_workstream.get(ws)
            if mine is None:
                mine = by_workstream[ws] = dict.fromkeys(TASK_STATUSES, 0)
            mine[task.status] += 1
            self.dirty_workstreams.add(ws)

    def _note_end(self, task: TaskState, was_terminal: bool) -> None:
        """Keep the latest end of a terminal task: a task's end only moves later while it
        stays terminal, so only one leaving a terminal status calls for a recount."""
        if task.status in TASK_TERMINAL:
            end = task.key[0]  # type: ignore[index]  # a status other than pending has a key
            if not self._ended_stale and (self._ended_max is None or end > self._ended_max):
                self._ended_max = end
        elif was_terminal:
            self._ended_stale = True

    def _last_end(self) -> int | None:
        if self._ended_stale:
            ends = (t.key[0] for t in self.tasks.values() if t.key and t.status in TASK_TERMINAL)
            self._ended_max = _max(max(ends, default=None), self.retired_end)
            self._ended_stale = False
        return self._ended_max

    def _apply_run_level(self, e: Event) -> None:
        etype = e.type
        if etype == "run_created":
            for name in ("total_steps", "total_tasks"):
                declared = e.payload.get(name)
                if type(declared) is int and declared > self.declared_total:
                    self.declared_total = declared
        elif etype == "run_started":
            self._note_start(e.time)
        elif etype in RUN_EXPLICIT_END:
            key = (e.time, 0, e.id)
            if self.explicit_key is None or key > self.explicit_key:
                self.explicit_key = key
                status = RUN_EXPLICIT_END[etype]
                if not status:
                    declared = e.payload.get("status")
                    if declared == "cancelled":
                        declared = "canceled"
                    status = declared if declared in RUN_TERMINAL else ""
                self.explicit_status = status

    def _apply_workstream_level(self, e: Event, ws: str, lifecycle: tuple[int, str] | None) -> None:
        if lifecycle is None:
            return
        rank, status = lifecycle
        key = (e.time, rank, e.id)
        current = self.workstreams.get(ws)
        if current is None or key > current[0]:
            self.workstreams[ws] = (key, status)
            self.dirty_workstreams.add(ws)

    def _note_start(self, t: int) -> None:
        if self.started_at is None or t < self.started_at:
            self.started_at = t

    def status(self) -> tuple[str, int | None]:
        """(status, ended_at) by the contract: explicit end, implicit end, running, pending."""
        counts = self.counts
        if self.explicit_key is not None:
            status = self.explicit_status or _derived_end_status(counts)
            return status, self.explicit_key[0]
        if self.declared_total >= 1:
            ended = counts["succeeded"] + counts["failed"] + counts["skipped"] + counts["canceled"]
            if ended >= self.declared_total:
                return _derived_end_status(counts), self._last_end()
        return ("running" if self.started_at is not None else "pending"), None

    @property
    def events_total(self) -> int:
        return len(self.seen) + self.retired_events

    def retire(self, task_ids: Iterable[str]) -> list[tuple[str, int, list[Any]]]:
        """Let finished tasks, clean since the last flush, leave memory with the ids of their
        events: (task id, end, saved form as `saved_task`'s) of each. Events of a retired
        task must wait for it to come back. From now on the run keeps each task's event ids
        (if it did not already: see TRACK_IDS_FROM)."""
        events = self.task_events
        if events is None:
            events = self.task_events = {}
        tasks, pop_ids, out, leaving = self.tasks, events.pop, [], []
        for task_id in task_ids:
            task = tasks.pop(task_id)
            ids = pop_ids(task_id, [])
            leaving += ids
            out.append((task_id, task.key[0], [*task.to_list(), ids]))  # type: ignore[index]
        self.seen.difference_update(leaving)
        self.retired_end = _max(max((end for _, end, _ in out), default=None), self.retired_end)
        self.retired_tasks += len(out)
        self.retired_events += len(leaving)
        return out

    def page_in(self, task_id: str, saved: list[Any], retired_end: int | None) -> None:
        """Take a retired task back from its saved form; `retired_end` is the latest end
        among the tasks still retired."""
        ids = saved[6]
        self.tasks[task_id] = TaskState.from_list(saved)
        self.task_events[task_id] = ids  # type: ignore[index]  # retiring: kept per task
        self.seen.update(ids)
        self.retired_tasks -= 1
        self.retired_events -= len(ids)
        self.retired_end = retired_end

    def saved_task(self, task_id: str) -> list[Any]:
        """A task as saved: `TaskState.to_list`, then the ids of its events once the run keeps
        them (so a big run read back from the store can let them go with the task)."""
        saved = self.tasks[task_id].to_list()
        if self.task_events is not None:
            saved.append(sorted(self.task_events.get(task_id, ())))
        return saved

    def is_terminal(self) -> bool:
        return self.status()[0] in RUN_TERMINAL

    def row(self, current: tuple[str, int | None] | None = None) -> dict[str, Any]:
        """The `runs` row; `stalled` is the flag last decided by `detect_stalls`, and an
        open run it found silent past `forget_after` shows as `abandoned`. `current` is
        `status()` when the caller already has it."""
        status, ended_at = current or self.status()
        if self.abandoned and status not in RUN_TERMINAL:
            status = "abandoned"
        counts = self.counts
        duration = None
        begin = self.started_at if self.started_at is not None else self.created_at
        if ended_at is not None and begin is not None:
            duration = (ended_at - begin) / 1e6
        return {
            "run_id": self.run_id,
            "status": status,
            "created_at": format_time(self.created_at),
            "started_at": format_time(self.started_at),
            "ended_at": format_time(ended_at),
            "last_event_at": format_time(self.last_event_at),
            "duration_s": duration,
            "tasks_total": max(self.declared_total, len(self.tasks) + self.retired_tasks),
            "tasks_succeeded": counts["succeeded"],
            "tasks_failed": counts["failed"],
            "tasks_running": counts["running"],
            "tasks_pending": counts["pending"],
            "tasks_skipped": counts["skipped"],
            "tasks_canceled": counts["canceled"],
            "events_total": self.events_total,
            "error_events": self.errors,
            "stalled": int(self.stalled and status not in RUN_TERMINAL),
        }

    def task_rows(self, task_ids: set[str] | None = None) -> list[dict[str, Any]]:
        ids = self.tasks.keys() if task_ids is None else task_ids
        rows = []
        for task_id in sorted(ids):
            task = self.tasks[task_id]
            rows.append(
                {
                    "run_id": self.run_id,
                    "task_id": task_id,
                    "workstream_id": task.workstream,
                    "status": task.status,
                    "attempts": len(task.starts),
                    "started_at": format_time(task.started_at),
                    "ended_at": format_time(task.ended_at),
                }
            )
        return rows

    def workstream_rows(self, workstreams: set[str] | None = None) -> list[dict[str, Any]]:
        """The rows of `workstreams` (default: all; a task's workstream is always named)."""
        rows = []
        for ws in sorted(self.workstreams if workstreams is None else workstreams):
            counts = self.workstream_counts.get(ws) or _NO_TASKS
            explicit = self.workstreams.get(ws)
            status = explicit[1] if explicit is not None else _derived_workstream_status(counts)
            rows.append(
                {
                    "run_id": self.run_id,
                    "workstream_id": ws,
                    "status": status,
                    "tasks_total": sum(counts.values()),
                    "tasks_succeeded": counts["succeeded"],
                    "tasks_failed": counts["failed"],
                    "tasks_running": counts["running"],
                }
            )
        return rows

    def observe(self, current: tuple[str, int | None] | None = None) -> list[DerivedEvent]:
        """Derived completion events for what changed since the last call (§3). A finished
        run that gets events without changing status gives RUN_UPDATED, so its reports can
        follow; `explicit` says whether a run-level terminal event decided the status."""
        status, ended_at = current or self.status()
        previous = self.reported_status
        events_before, self.reported_events = self.reported_events, self.events_total
        at = ended_at if ended_at is not None else (self.last_event_at or 0)
        explicit = self.explicit_key is not None
        was_terminal = previous in RUN_TERMINAL
        if status == previous:
            if not was_terminal or self.events_total == events_before:
                return []
            data = {"status": status, "events_total": self.events_total, "explicit": explicit}
            return [DerivedEvent("RUN_UPDATED", at, self.run_id, data)]
        self.reported_status = status
        if status in RUN_TERMINAL and not was_terminal:
            row = self.row((status, ended_at))
            counts = {
                k: row[k]
                for k in (
                    "tasks_total",
                    "tasks_succeeded",
                    "tasks_failed",
                    "events_total",
                    "error_events",
                    "duration_s",
                )
            }
            return [
                DerivedEvent(
                    "RUN_COMPLETED",
                    at,
                    self.run_id,
                    {"status": status, **counts, "explicit": explicit},
                )
            ]
        if was_terminal:
            return [
                DerivedEvent(
                    "RUN_STATUS_CHANGED",
                    at,
                    self.run_id,
                    {"previous_status": previous, "status": status, "explicit": explicit},
                )
            ]
        return []

    def header(self) -> dict[str, Any]:
        """The state but its tasks, which are saved one by one (`TaskState.to_list`); with
        the error ids while this state keeps them (it may still be merged into another)."""
        head: dict[str, Any] = {
            "created_at": self.created_at,
            "last_event_at": self.last_event_at,
            "started_at": self.started_at,
            "errors": self.errors,
            "declared_total": self.declared_total,
            "explicit_key": self.explicit_key,
            "explicit_status": self.explicit_status,
            "workstreams": self.workstreams,
            "reported_status": self.reported_status,
            "reported_events": self.reported_events,
            "stalled": self.stalled,
            "abandoned": self.abandoned,
        }
        if self.error_ids is not None:
            head["error_ids"] = sorted(self.error_ids)
        return head

    def to_dict(self) -> dict[str, Any]:
        """The whole state in one value: the header with every task under "tasks"."""
        return {**self.header(), "tasks": {k: t.to_list() for k, t in self.tasks.items()}}

    def keep_error_count_only(self) -> None:
        """Let go of the error ids: only merging this state into another needs them."""
        self.error_ids = None

    @classmethod
    def from_dict(cls, run_id: str, data: dict[str, Any], seen: set[str]) -> RunState:
        """Restore a state saved by `to_dict` (or its header, with the saved tasks under
        "tasks"); `seen` comes from the event index."""
        state = cls(run_id, seen)
        for name in (
            "created_at",
            "last_event_at",
            "started_at",
            "declared_total",
            "explicit_status",
            "reported_status",
            "reported_events",
            "stalled",
            "abandoned",
            "errors",
        ):
            setattr(state, name, data[name])
        error_ids = data.get("error_ids")  # only in a whole state handed over unsaved
        state.error_ids = None if error_ids is None else set(error_ids)
        key = data["explicit_key"]
        state.explicit_key = tuple(key) if key else None
        state.workstreams = {
            ws: ((tuple(v[0]), v[1]) if v else None) for ws, v in data["workstreams"].items()
        }
        saved_tasks = data.get("tasks", {})
        state.tasks = {k: TaskState.from_list(v) for k, v in saved_tasks.items()}
        kept = {k: v[6] for k, v in saved_tasks.items() if len(v) > 6}
        state.task_events = kept or None
        for task in state.tasks.values():
            state._recount(None, None, task)
        state._ended_stale = True
        state.dirty_workstreams.clear()
        return state


def _max(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None or a >= b else b


def _min(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None or a <= b else b


def _derived_end_status(counts: dict[str, int]) -> str:
    if counts["failed"] == 0:
        return "succeeded"
    return "partial" if counts["succeeded"] else "failed"


_NO_TASKS: Final = dict.fromkeys(TASK_STATUSES, 0)


def _derived_workstream_status(counts: dict[str, int]) -> str:
    if not any(counts.values()):
        return "pending"
    if not counts["pending"] and not counts["running"]:
        return "failed" if counts["failed"] else "succeeded"
    return "running" if counts["running"] else "pending"
