"""The event values the projections consume and emit: decoded input events and derived events."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Final, TypeVar

ORCHESTRATOR: Final = "o"
PATTERN: Final = "p"

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH: Final = datetime(1970, 1, 1)


class Event:
    """One accepted input line, normalised by the contract (§1). Times are UTC microseconds.

    `task` is the task key of an orchestrator event and the pattern_run_id of a pattern event.
    """

    __slots__ = (
        "family",
        "id",
        "payload",
        "raw",
        "run_id",
        "severity",
        "task",
        "time",
        "type",
        "workstream",
    )

    def __init__(
        self,
        family: str,
        id: str,
        type: str,
        time: int,
        severity: str,
        payload: dict[str, Any],
        run_id: str | None,
        task: str | None,
        workstream: str | None,
        raw: dict[str, Any],
    ) -> None:
        self.family = family
        self.id = id
        self.type = type
        self.time = time
        self.severity = severity
        self.payload = payload
        self.run_id = run_id
        self.task = task
        self.workstream = workstream
        self.raw = raw

    def __repr__(self) -> str:
        when = format_time(self.time)
        return f"Event({self.type!r}, id={self.id!r}, run={self.run_id!r}, t={when})"


_Data = TypeVar("_Data")


def pickled_as_tuple(cls: type[_Data]) -> type[_Data]:
    """For a frozen dataclass that processes exchange by the thousand (a replay's workers
    and parent): it pickles as its class and a tuple of its fields, read in C, at half the
    cost of the generic frozen-dataclass state. The fields are the dataclass's own, so one
    added later travels too."""
    values: Callable[[Any], tuple[Any, ...]] = operator.attrgetter(
        *(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    )

    def __reduce__(self: Any) -> tuple[type[_Data], tuple[Any, ...]]:
        return cls, values(self)

    cls.__reduce__ = __reduce__  # type: ignore[method-assign]
    return cls


@pickled_as_tuple
@dataclass(frozen=True, slots=True)
class DerivedEvent:
    """Something processing observed (§3): depends on arrival order, not on converged state."""

    type: str
    time: int
    run_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "event_time": format_time(self.time)}
        if self.run_id is not None:
            out["run_id"] = self.run_id
        out.update(self.data)
        return out


def format_time(us: int | None) -> str | None:
    """UTC microseconds → `YYYY-MM-DDTHH:MM:SS.ffffffZ`, the only time format in outputs."""
    if us is None:
        return None
    minute, rest = divmod(us, 60_000_000)
    second, micros = divmod(rest, 1_000_000)
    return f"{_MINUTES.get(minute) or _minute(minute)}{_SECONDS[second]}{micros:06d}Z"


_MINUTES: dict[int, str] = {}
"""Minute since the epoch → `YYYY-MM-DDTHH:MM:`: a flush formats many times of few minutes."""
_MINUTES_MAX: Final = 16_384
_SECONDS: Final = tuple(f"{second:02d}." for second in range(60))


def _minute(minute: int) -> str:
    day, rest = divmod(minute, 1440)
    hour, minute_of_hour = divmod(rest, 60)
    prefix = f"{_date(day)}T{hour:02d}:{minute_of_hour:02d}:"
    if len(_MINUTES) >= _MINUTES_MAX:
        _MINUTES.clear()
    _MINUTES[minute] = prefix
    return prefix


@lru_cache(maxsize=4096)
def _date(day: int) -> str:
    """`YYYY-MM-DD` of a day since the epoch."""
    return (_NAIVE_EPOCH + timedelta(days=day)).date().isoformat()


def to_micros(moment: datetime) -> int:
    """An aware or naive (= UTC) datetime → UTC microseconds since the epoch."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)
