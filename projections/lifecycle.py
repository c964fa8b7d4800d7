"""What each orchestrator event type means to the run fold (contract §2): the lifecycle
tables, and each type's meaning worked out once."""

from __future__ import annotations

from typing import Final, NamedTuple

# event type -> (rank, status); status None means "read payload.status" (step_completed).
TASK_LIFECYCLE: Final[dict[str, tuple[int, str | None]]] = {
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
TASK_START: Final = frozenset({"task_started", "step_started"})

# event type -> status; "" means "payload.status if valid, else derived from the tasks".
RUN_EXPLICIT_END: Final[dict[str, str]] = {
    "run_completed": "",
    "run_succeeded": "succeeded",
    "run_failed": "failed",
    "run_quarantined": "quarantined",
    "run_canceled": "canceled",
    "run_cancelled": "canceled",
}

# workstream/job lifecycle suffix -> (rank, status)
WORKSTREAM_LIFECYCLE: Final[dict[str, tuple[int, str]]] = {
    "created": (0, "pending"),
    "started": (1, "running"),
    "paused": (2, "paused"),
    "resumed": (2, "running"),
    "completed": (3, "succeeded"),
    "failed": (3, "failed"),
    "cancelled": (3, "canceled"),
    "canceled": (3, "canceled"),
}

STEP_STATUS: Final = {
    "succeeded": "succeeded",
    "failed": "failed",
    "canceled": "canceled",
    "cancelled": "canceled",
    "skipped": "skipped",
}


class Kind(NamedTuple):
    """What an event type means to the run fold, worked out once per distinct type."""

    failed: bool
    run_level: bool
    workstream_level: bool
    workstream_lifecycle: tuple[int, str] | None
    task_rank: int  # -1: not a task lifecycle event
    task_status: str | None  # None: read payload.status (step_completed)
    task_start: bool


KINDS: dict[str, Kind] = {}


def classify(etype: str) -> Kind:
    """The meaning of `etype`, kept for the next event of that type."""
    lifecycle = TASK_LIFECYCLE.get(etype)
    workstream_level = etype.startswith(("workstream_", "job_"))
    kind = Kind(
        failed=etype.endswith("_failed"),
        run_level=etype.startswith("run_"),
        workstream_level=workstream_level,
        workstream_lifecycle=WORKSTREAM_LIFECYCLE.get(etype.partition("_")[2])
        if workstream_level
        else None,
        task_rank=lifecycle[0] if lifecycle else -1,
        task_status=lifecycle[1] if lifecycle else None,
        task_start=etype in TASK_START,
    )
    if len(KINDS) < 10_000:  # event types are a small set; never grow without bound
        KINDS[etype] = kind
    return kind
