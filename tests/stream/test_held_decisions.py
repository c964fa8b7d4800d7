"""A replay's held decisions live on disk and come back in batches: the outbox they make
is the one deciding everything at once in memory would make, entry for entry."""

from __future__ import annotations

import random

import pytest

from runwatch.projections import DerivedEvent
from runwatch.sinks.store.api import Changes, OutboxEntry
from runwatch.sinks.store.spill import HeldOnDisk
from runwatch.stream.core import decisions as decisions_module
from runwatch.stream.core.decisions import Decisions
from runwatch.stream.settings.alerts import default_alert_setup

MINUTE = 60_000_000


def history(seed: int) -> list[DerivedEvent]:
    """Stalls, recoveries and completions of many runs, close enough in time to group."""
    rng = random.Random(seed)
    events = []
    for n in range(300):
        run, start = f"R{n}", rng.randrange(0, 600) * MINUTE
        events.append(DerivedEvent("RUN_STALLED", start, run, {"silent_s": 1900}))
        if rng.random() < 0.5:
            events.append(DerivedEvent("RUN_RECOVERED", start + MINUTE, run, {}))
        status = rng.choice(["succeeded", "failed"])
        events.append(DerivedEvent("RUN_COMPLETED", start + 2 * MINUTE, run, {"status": status}))
    return events


def in_memory(events: list[DerivedEvent], now: int) -> list[OutboxEntry]:
    setup = default_alert_setup()
    changes = Changes()
    Decisions(setup.rules, None, setup.policy(deliver=False)).decide([], events, now, changes)
    return changes.outbox


def held_back(
    commits: list[list[DerivedEvent]], now: int
) -> tuple[list[list[OutboxEntry]], Changes]:
    setup = default_alert_setup()
    decisions = Decisions(setup.rules, None, setup.policy(deliver=False), holding=HeldOnDisk())
    for events in commits:
        decisions.decide([], events, now, Changes())
    batches: list[list[OutboxEntry]] = []
    final = Changes()
    decisions.release(now, final, batches.append)
    return batches, final


def test_released_in_batches_as_if_decided_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decisions_module, "RELEASE_BATCH", 25)
    events = history(seed=5)
    now = 700 * MINUTE
    expected = in_memory(events, now)
    commits = [events[i : i + 97] for i in range(0, len(events), 97)]
    batches, final = held_back(commits, now)
    released = [entry for batch in batches for entry in batch]
    assert released == expected
    assert sum(e.kind == "alert" for e in released) > 50 and len(batches) > 3
    # The triggers come back a batch at a time; what ends at `now` comes out at once.
    assert all(25 <= len(batch) < 2 * 25 for batch in batches[:3])
    assert final.outbox == [] and final.alert_states, "the book's state goes with the commit"


def test_an_event_held_twice_is_decided_once() -> None:
    events = history(seed=9)
    now = 700 * MINUTE
    once, _ = held_back([events], now)
    twice, _ = held_back([events, list(reversed(events))], now)
    alert_ids = lambda batches: [e.id for b in batches for e in b if e.kind == "alert"]  # noqa: E731
    assert alert_ids(twice) == alert_ids(once) and alert_ids(once)
