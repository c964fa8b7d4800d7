"""Pure projections: events in, state and derived events out. No I/O, no clock."""

from .detect import OpenRuns, detect_stalls
from .events import ORCHESTRATOR, PATTERN, DerivedEvent, Event, format_time, to_micros
from .patterns import OrphanEvents, PatternRunState
from .runs import RUN_TERMINAL, RunState
from .tasks import TaskState

__all__ = [
    "ORCHESTRATOR",
    "PATTERN",
    "RUN_TERMINAL",
    "DerivedEvent",
    "Event",
    "OpenRuns",
    "OrphanEvents",
    "PatternRunState",
    "RunState",
    "TaskState",
    "detect_stalls",
    "format_time",
    "to_micros",
]
