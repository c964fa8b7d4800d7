"""Stall and abandonment detection: a pure function of the open runs and a `now` passed in
(contract §2)."""

from __future__ import annotations

from collections.abc import Mapping

from .events import DerivedEvent, format_time

OpenRuns = Mapping[str, tuple[int, bool]]
"""run_id -> (last_event_at, currently flagged stalled) for every non-terminal run."""


def detect_stalls(
    open_runs: OpenRuns,
    now: int,
    stall_after_us: int,
    forget_after_us: int | None = None,
    *,
    limit: int | None = None,
) -> list[DerivedEvent]:
    """RUN_STALLED for runs silent longer than `stall_after`, RUN_RECOVERED for flagged runs
    that are no longer silent, RUN_ABANDONED for runs silent longer than `forget_after`
    (preceded by RUN_RECOVERED, reason `abandoned`, when the run was flagged, so its stall
    alert resolves). Sorted by run id so the output does not depend on dict order.
    Each is dated when it happened, not when it was noticed: a stall at the end of the
    allowed silence, an abandonment at the end of `forget_after`, a recovery at the event
    that ended it (so a service started long after a run went quiet still places the stall
    in the past, where the alert horizon sees it). With `limit`, the changes of at most that
    many runs, the first by run id: a caller that applies a bounded number per call pays
    for those only, not for every silent run."""
    horizon = now - stall_after_us
    forget_horizon = None if forget_after_us is None else now - forget_after_us
    changes: list[DerivedEvent] = []
    changed = 0
    for run_id in sorted(open_runs):
        if changed == limit:
            break
        last_event_at, flagged = open_runs[run_id]
        if forget_horizon is not None and last_event_at < forget_horizon:
            assert forget_after_us is not None
            changes.extend(_abandon(run_id, last_event_at, flagged, now, forget_after_us))
            changed += 1
            continue
        silent = last_event_at < horizon
        if silent and not flagged:
            changed += 1
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
            changed += 1
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


def _abandon(
    run_id: str, last_event_at: int, flagged: bool, now: int, forget_after_us: int
) -> list[DerivedEvent]:
    at = last_event_at + forget_after_us
    last = format_time(last_event_at)
    out = []
    if flagged:
        out.append(
            DerivedEvent(
                "RUN_RECOVERED", at, run_id, {"last_event_at": last, "reason": "abandoned"}
            )
        )
    out.append(
        DerivedEvent(
            "RUN_ABANDONED",
            at,
            run_id,
            {"last_event_at": last, "silent_s": (now - last_event_at) / 1e6},
        )
    )
    return out
