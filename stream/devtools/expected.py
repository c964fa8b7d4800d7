"""What a correct projection must conclude about a simulated run: the contract's §2 status
rules, applied independently of `projections/` so the simulator can check it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

TASK_RANK: Final[dict[str, tuple[int, str | None]]] = {
    "task_created": (0, "pending"),
    "task_assigned": (0, "pending"),
    "task_started": (1, "running"),
    "step_started": (1, "running"),
    "task_progress": (2, "running"),
    "task_completed": (3, "succeeded"),
    "task_succeeded": (3, "succeeded"),
    "task_failed": (3, "failed"),
    "step_failed": (3, "failed"),
    "task_skipped": (3, "skipped"),
    "task_canceled": (3, "canceled"),
    "task_cancelled": (3, "canceled"),
    "step_completed": (3, None),
}
_TASK_TERMINAL: Final = frozenset({"succeeded", "failed", "skipped", "canceled"})
_START_TYPES: Final = frozenset({"run_started", "task_started", "step_started"})
_RUN_TERMINAL: Final[dict[str, str | None]] = {
    "run_completed": None,
    "run_succeeded": "succeeded",
    "run_failed": "failed",
    "run_quarantined": "quarantined",
    "run_canceled": "canceled",
    "run_cancelled": "canceled",
}
RUN_COMPLETED_STATUSES: Final = frozenset(
    {"succeeded", "failed", "partial", "quarantined", "canceled"}
)


# (time, type, task key, payload) as written, for the expected-status projection
Record = tuple[int, str, str | None, dict[str, Any]]


def project(records: Iterable[Record]) -> tuple[str, dict[str, str]]:
    """Run status and task statuses by the contract's semantics, from the events of one run."""
    declared = 0
    latest: dict[str, tuple[int, int, int, str]] = {}
    explicit: tuple[int, int, str | None] | None = None
    started = False
    for order, (time, kind, task, payload) in enumerate(records):
        if kind in _START_TYPES:
            started = True
        elif kind == "run_created":
            for field in ("total_tasks", "total_steps"):
                value = payload.get(field)
                if isinstance(value, int) and value > declared:
                    declared = value
        life = TASK_RANK.get(kind)
        if life is not None and task is not None:
            rank, status = life
            if status is None:
                given = payload.get("status")
                status = given if given in _TASK_TERMINAL else "failed"
            key = (time, rank, order, status)
            if task not in latest or key > latest[task]:
                latest[task] = key
        if kind in _RUN_TERMINAL and (explicit is None or (time, order) > explicit[:2]):
            status = _RUN_TERMINAL[kind]
            if status is None:
                given = payload.get("status")
                status = given if given in RUN_COMPLETED_STATUSES else None
            explicit = (time, order, status)
    tasks = {task: key[3] for task, key in latest.items()}
    failed = sum(1 for s in tasks.values() if s == "failed")
    succeeded = sum(1 for s in tasks.values() if s == "succeeded")
    derived = "succeeded" if not failed else "partial" if succeeded else "failed"
    if explicit is not None:
        return explicit[2] or derived, tasks
    terminal = sum(1 for s in tasks.values() if s in _TASK_TERMINAL)
    if declared >= 1 and terminal >= declared:
        return derived, tasks
    return ("running" if started else "pending"), tasks
