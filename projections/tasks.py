"""One task of a run: its latest lifecycle event decides its status (contract §2)."""

from __future__ import annotations

from typing import Any, Final

Key = tuple[int, int, str]
"""(event time, lifecycle rank, event id): the later key wins."""

TASK_TERMINAL: Final = frozenset({"succeeded", "failed", "skipped", "canceled"})


class TaskState:
    """One task of a run: latest lifecycle event decides its status."""

    __slots__ = ("key", "started_at", "starts", "status", "workstream", "workstream_key")

    def __init__(self) -> None:
        self.status = "pending"
        self.key: Key | None = None
        self.started_at: int | None = None
        self.starts: tuple[str, ...] = ()  # ids of its start events; few, and a set costs 216 B
        self.workstream: str | None = None
        self.workstream_key: Key | None = None

    def merge(self, other: TaskState) -> None:
        if other.key is not None and (self.key is None or other.key > self.key):
            self.key, self.status = other.key, other.status
        if other.started_at is not None and (
            self.started_at is None or other.started_at < self.started_at
        ):
            self.started_at = other.started_at
        self.starts += tuple(s for s in other.starts if s not in self.starts)
        if other.workstream_key is not None and (
            self.workstream_key is None or other.workstream_key > self.workstream_key
        ):
            self.workstream_key, self.workstream = other.workstream_key, other.workstream

    @property
    def ended_at(self) -> int | None:
        if self.key is not None and self.status in TASK_TERMINAL:
            return self.key[0]
        return None

    def to_list(self) -> list[Any]:
        return [
            self.status,
            self.key,
            self.started_at,
            sorted(self.starts),
            self.workstream,
            self.workstream_key,
        ]

    @classmethod
    def from_list(cls, data: list[Any]) -> TaskState:
        """The task of `to_list`'s value (a run may save more after it: see `saved_task`)."""
        task = cls()
        task.status, key, task.started_at, starts, task.workstream, ws_key = data[:6]
        task.starts = tuple(starts)
        task.key = tuple(key) if key else None  # JSON gives lists
        task.workstream_key = tuple(ws_key) if ws_key else None
        return task
