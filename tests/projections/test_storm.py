"""Alert storms: a limit per rule and minute of event time, the rest grouped into one."""

from __future__ import annotations

from runwatch.projections import DerivedEvent
from runwatch.projections.alerts import AlertBook, Matcher, Notification, Rule, RuleSet
from runwatch.projections.storm import SAMPLE, WINDOW_US, StormGate
from runwatch.projections.storm import StormWindow as Window

STALLED = Rule("run_stalled", "medium", ("console", "webhook"), (Matcher("RUN_STALLED"),))


def stalls(book: AlertBook, runs: int, first: int = 0) -> list[Notification]:
    """One firing notification for each of `runs` runs going quiet in minute 0."""
    out = []
    for index in range(first, first + runs):
        event = DerivedEvent("RUN_STALLED", index, f"R{index:05}")
        for trigger in book.rules.match_derived(event):
            notification = book.offer(trigger)
            assert notification is not None
            out.append(notification)
    return out


def test_beyond_the_limit_a_minute_becomes_one_grouped_notification() -> None:
    """1,000 runs going quiet together must not page 1,000 times."""
    gate = StormGate(30)
    notifications = stalls(AlertBook(RuleSet([STALLED])), 1000)
    sent = [n for n in notifications if gate.admit(n)]
    assert len(sent) == 30
    assert gate.due(WINDOW_US - 1) == [], "the minute is not over yet"
    [digest] = gate.due(WINDOW_US)
    assert digest.suppressed == 970 and digest.event["grouped"] == 970
    assert digest.event["runs"] == [f"R{i:05}" for i in range(30, 30 + SAMPLE)]
    assert "970 more run_stalled notifications" in digest.summary
    assert digest.channels == STALLED.channels and digest.severity == STALLED.severity
    assert gate.due(2 * WINDOW_US) == [], "sent once"


def test_grouping_is_the_same_on_every_replay() -> None:
    """Outbox ids must stay stable: the same notifications give the same digest id."""
    ids = []
    for _ in range(2):
        gate = StormGate(5)
        for notification in stalls(AlertBook(RuleSet([STALLED])), 50):
            gate.admit(notification)
        ids.append([d.id for d in gate.due(WINDOW_US)])
    assert ids[0] == ids[1] and len(ids[0]) == 1


def test_a_late_notification_of_a_closed_minute_is_still_grouped() -> None:
    """A service catching up sees old minutes after their end: they must stay limited."""
    gate = StormGate(2)
    book = AlertBook(RuleSet([STALLED]))
    first = stalls(book, 3)
    assert [gate.admit(n) for n in first] == [True, True, False]
    [one] = gate.due(2 * WINDOW_US)
    late = stalls(book, 3, first=3)  # three more runs of the same minute
    assert [gate.admit(n) for n in late] == [False, False, False]
    [two] = gate.due(3 * WINDOW_US)
    assert (one.suppressed, two.suppressed) == (1, 3) and one.id != two.id


def test_window_counts_survive_a_restart_and_old_minutes_are_forgotten() -> None:
    gate = StormGate(2)
    for notification in stalls(AlertBook(RuleSet([STALLED])), 3):
        gate.admit(notification)
    changed, dropped = gate.take_changes()
    saved = {key: Window.from_dict(window.to_dict()) for key, window in changed}
    restored = StormGate(2, saved)
    [digest] = restored.due(WINDOW_US)
    assert digest.suppressed == 1
    restored.due(20 * WINDOW_US)
    assert restored.windows == {} and restored.take_changes()[1] == [("run_stalled", 0)]
    assert dropped == []
