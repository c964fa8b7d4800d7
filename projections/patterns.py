"""Pattern runs folded from `pattern.<phase>.<outcome>` events (contract §2, pattern_runs).

Like `RunState`, every field is latest-wins under `(time, rank, id)`, a minimum or a set of
event ids, so `apply` is idempotent and commutative and `merge` joins partial states. The
rank is the phase order, which matters: the real upstream files give several phases one
shared timestamp.
"""

from __future__ import annotations

from typing import Any, Final

from .events import Event, format_time

Key = tuple[int, int, str]

PHASE_RANK: Final[dict[str, int]] = {
    "selection.started": 0,
    "selection.resolved": 1,
    "selection.failed": 1,
    "template.expanded": 2,
    "validation.started": 3,
    "validation.completed": 4,
    "validation.failed": 4,
    "execution.started": 5,
    "execution.completed": 6,
    "execution.failed": 6,
}
STATUS_NAMES: Final[dict[str, str]] = {
    "in_progress": "running",
    "success": "succeeded",
    "failed": "failed",
    "warning": "warning",
    "skipped": "skipped",
}
EXECUTION_END: Final = frozenset({"execution.completed", "execution.failed"})
ATTRIBUTES: Final = ("pattern_id", "job_id", "step_id", "run_id")


class PatternRunState:
    """One pattern run: the latest event gives status and phase."""

    __slots__ = (
        "attributes",
        "duration",
        "error",
        "key",
        "pattern_run_id",
        "phase",
        "raw_status",
        "seen",
        "started_at",
    )

    def __init__(self, pattern_run_id: str, seen: set[str] | None = None) -> None:
        self.pattern_run_id = pattern_run_id
        self.seen: set[str] = set() if seen is None else seen
        self.key: Key | None = None
        self.raw_status = "in_progress"
        self.phase: str | None = None
        self.started_at: int | None = None
        self.duration: tuple[Key, float] | None = None
        self.error: tuple[Key, str | None] | None = None
        self.attributes: dict[str, tuple[Key, str]] = {}

    def apply(self, e: Event) -> bool:
        """Fold one pattern event in; False (and no change) for a duplicate."""
        if e.id in self.seen:
            return False
        self.seen.add(e.id)
        phase = e.type[len("pattern.") :]
        key = (e.time, PHASE_RANK.get(phase, -1), e.id)
        if self.started_at is None or e.time < self.started_at:
            self.started_at = e.time
        raw_status = e.raw.get("status")
        status = raw_status if isinstance(raw_status, str) and raw_status else "in_progress"
        if self.key is None or key > self.key:
            self.key = key
            self.raw_status = status
            self.phase = phase.partition(".")[0]
        details = e.payload
        duration = details.get("duration_seconds")
        is_number = isinstance(duration, int | float) and not isinstance(duration, bool)
        if (
            phase in EXECUTION_END
            and is_number
            and (self.duration is None or key > self.duration[0])
        ):
            self.duration = (key, float(duration))  # type: ignore[arg-type]
        if (status == "failed" or phase.endswith(".failed")) and (
            self.error is None or key > self.error[0]
        ):
            message = details.get("error_message") or details.get("error")
            self.error = (key, None if message is None else str(message))
        for name in ATTRIBUTES:
            value = e.raw.get(name) or details.get(name)
            if name == "run_id":
                value = e.run_id
            if isinstance(value, str) and value:
                current = self.attributes.get(name)
                if current is None or key > current[0]:
                    self.attributes[name] = (key, value)
        return True

    def merge(self, other: PatternRunState) -> None:
        """Join a partial state of the same pattern run into this one."""
        self.seen |= other.seen
        if other.key is not None and (self.key is None or other.key > self.key):
            self.key, self.raw_status, self.phase = other.key, other.raw_status, other.phase
        if other.started_at is not None and (
            self.started_at is None or other.started_at < self.started_at
        ):
            self.started_at = other.started_at
        if other.duration is not None and (
            self.duration is None or other.duration[0] > self.duration[0]
        ):
            self.duration = other.duration
        if other.error is not None and (self.error is None or other.error[0] > self.error[0]):
            self.error = other.error
        for name, value in other.attributes.items():
            current = self.attributes.get(name)
            if current is None or value[0] > current[0]:
                self.attributes[name] = value

    def row(self) -> dict[str, Any]:
        latest = self.key
        finished = latest[0] if latest is not None and self.raw_status != "in_progress" else None
        attrs = {name: (v[1] if (v := self.attributes.get(name)) else None) for name in ATTRIBUTES}
        return {
            "pattern_run_id": self.pattern_run_id,
            **attrs,
            "status": STATUS_NAMES.get(self.raw_status, self.raw_status),
            "phase": self.phase,
            "started_at": format_time(self.started_at),
            "finished_at": format_time(finished),
            "duration_s": self.duration[1] if self.duration else None,
            "error_message": self.error[1] if self.error else None,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "raw_status": self.raw_status,
            "phase": self.phase,
            "started_at": self.started_at,
            "duration": self.duration,
            "error": self.error,
            "attributes": self.attributes,
        }

    @classmethod
    def from_dict(
        cls, pattern_run_id: str, data: dict[str, Any], seen: set[str]
    ) -> PatternRunState:
        """Restore a state saved by `to_dict`; `seen` comes from the event index."""
        state = cls(pattern_run_id, seen)
        state.key = _key(data["key"])
        state.raw_status = data["raw_status"]
        state.phase = data["phase"]
        state.started_at = data["started_at"]
        duration, error = data["duration"], data["error"]
        state.duration = (_known(duration[0]), duration[1]) if duration else None
        state.error = (_known(error[0]), error[1]) if error else None
        state.attributes = {k: (_known(v[0]), v[1]) for k, v in data["attributes"].items()}
        return state


class OrphanEvents:
    """Accepted events that belong to no run and no pattern run: only deduplicated."""

    __slots__ = ("seen",)

    def __init__(self, seen: set[str] | None = None) -> None:
        self.seen: set[str] = set() if seen is None else seen

    def apply(self, e: Event) -> bool:
        if e.id in self.seen:
            return False
        self.seen.add(e.id)
        return True

    def merge(self, other: OrphanEvents) -> None:
        self.seen |= other.seen


def _key(value: list[Any] | None) -> Key | None:
    return (value[0], value[1], value[2]) if value else None


def _known(value: list[Any]) -> Key:
    """A key saved beside a value: always present."""
    return (value[0], value[1], value[2])
