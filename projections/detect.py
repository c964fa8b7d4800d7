"""Stall detection: a pure function of the open runs and a `now` passed in (contract §2)."""

from __future__ import annotations

from collections.abc import Mapping

from .events import DerivedEvent, format_time

OpenRuns = Mapping[str, tuple[int, bool]]
"""run_id -> (last_event_at, currently flagged stalled) for every non-terminal run."""


def detect_stalls(open_runs: OpenRuns, now: int, stall_after_us: int) -> list[DerivedEvent]:
    """RUN_STALLED for runs silent longer than `stall_after`, RUN_RECOVERED for flagged runs
    that are no longer silent. Sorted by run id so the output does not depend on dict order.
    Each is dated when it happened, not when it was noticed: a stall at the end of the
    allowed silence, a recovery at the event that ended it (so a service started long after
    a run went quiet still places the stall in the past, where the alert horizon sees it)."""
    horizon = now - stall_after_us
    changes = []
    for run_id in sorted(open_runs):
        last_event_at, flagged = open_runs[run_id]
        silent = last_event_at < horizon
        if silent and not flagged:
            changes.append(
                DerivedEvent(
                    "RUN_STALLED",
                    last_event_at + stall_after_us,
                    run_id,
                    {
                        "last_event_at": format_time(last_event_at),
                        "silent_s": (now - last_event_at) / 1e6,
                    },
                )
            )
        elif flagged and not silent:
            changes.append(
                DerivedEvent(
                    "RUN_RECOVERED",
                    last_event_at,
                    run_id,
                    {
                        "last_event_at": format_time(last_event_at),
                    },
                )
            )
    return changes
