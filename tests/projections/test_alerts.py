"""Alert decisions in event time: matching, grouping, throttling, resolution."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from runwatch.projections import DerivedEvent
from runwatch.projections.alerts import (
    AlertBook,
    AlertState,
    Condition,
    Matcher,
    Rule,
    RuleSet,
    Trigger,
    render,
)
from runwatch.stream.core.decode import decode

MINUTE = 60_000_000
STALLED = Rule(
    "run_stalled",
    "medium",
    ("console",),
    (Matcher("RUN_STALLED"),),
    resolve=(Matcher("RUN_RECOVERED"),),
    throttle_us=60 * MINUTE,
    send_resolved=True,
    summary="run {run_id} stalled",
)
FAILED = Rule(
    "run_failure",
    "critical",
    ("console", "webhook"),
    (
        Matcher("RUN_COMPLETED", (Condition.parse("status", ["failed", "partial"]),)),
        Matcher("run_failed"),
    ),
    throttle_us=15 * MINUTE,
)


def derived(kind: str, minute: int, run: str = "R1", **data: object) -> DerivedEvent:
    return DerivedEvent(kind, minute * MINUTE, run, dict(data))


def offer_all(book: AlertBook, events: list[DerivedEvent]) -> list[str]:
    out = []
    for event in events:
        for trigger in book.rules.match_derived(event):
            notification = book.offer(trigger)
            if notification is not None:
                out.append(notification.state)
    return out


def test_conditions_select_by_value_list_and_comparison() -> None:
    """Rules must fire on the failures users care about and stay quiet on the rest."""
    rules = RuleSet(
        [
            FAILED,
            Rule(
                "loud",
                "high",
                ("console",),
                (Matcher("*", (Condition.parse("severity", ">= error"),)),),
            ),
        ]
    )
    assert [t.rule for t in rules.match_derived(derived("RUN_COMPLETED", 1, status="failed"))] == [
        "run_failure"
    ]
    assert rules.match_derived(derived("RUN_COMPLETED", 1, status="succeeded")) == []
    line = (
        b'{"event_type":"task_progress","run_id":"R1","timestamp":"2026-01-01T00:00:00Z",'
        b'"severity":"critical"}'
    )
    event = decode(line)
    assert [t.rule for t in rules.match_event(event)] == ["loud"]  # type: ignore[arg-type]
    quiet = decode(line.replace(b"critical", b"warning"))
    assert rules.match_event(quiet) == []  # type: ignore[arg-type]


def test_group_key_defaults_to_the_run() -> None:
    """One alert per run: failures of two runs are two problems, not one."""
    book = AlertBook(RuleSet([FAILED]))
    states = offer_all(
        book,
        [
            derived("RUN_COMPLETED", 1, "R1", status="failed"),
            derived("RUN_COMPLETED", 1, "R2", status="failed"),
        ],
    )
    assert states == ["firing", "firing"]


def test_repeat_inside_throttle_is_folded_into_the_next_notification() -> None:
    """A run_failed line and the RUN_COMPLETED it causes are one problem: one notification."""
    book = AlertBook(RuleSet([FAILED]))
    states = offer_all(
        book, [derived("RUN_COMPLETED", 0, status="failed"), derived("run_failed", 1)]
    )
    assert states == ["firing"]
    state = book.states[("run_failure", "run_id=R1")]
    assert state.suppressed == 1
    assert offer_all(book, [derived("run_failed", 16)]) == ["firing"]  # window over: again


def test_flapping_stall_inside_the_window_gives_one_notification() -> None:
    """Stall, recover, stall, recover inside the throttle window: one page, not four."""
    book = AlertBook(RuleSet([STALLED]))
    flaps = [
        derived(kind, minute)
        for minute, kind in enumerate(
            ["RUN_STALLED", "RUN_RECOVERED", "RUN_STALLED", "RUN_RECOVERED", "RUN_STALLED"]
        )
    ]
    assert offer_all(book, flaps) == ["firing"]
    assert book.due(30 * MINUTE) == []  # still inside the window, still stalled


def test_resolution_held_back_in_the_window_is_sent_when_it_ends() -> None:
    """send_resolved: the user hears that it is over, once, when throttling allows."""
    book = AlertBook(RuleSet([STALLED]))
    assert offer_all(book, [derived("RUN_STALLED", 0), derived("RUN_RECOVERED", 5)]) == ["firing"]
    assert book.due(59 * MINUTE) == []
    [resolved] = book.due(60 * MINUTE)
    assert (resolved.state, resolved.ends_at) == ("resolved", 5 * MINUTE)
    assert book.due(200 * MINUTE) == []


def test_a_problem_that_came_and_went_unannounced_is_not_resolved_aloud() -> None:
    """Never 'resolved' for an alert the user was never told about."""
    book = AlertBook(RuleSet([STALLED]))
    offer_all(book, [derived("RUN_STALLED", 0), derived("RUN_RECOVERED", 1)])
    book.due(61 * MINUTE)
    assert offer_all(book, [derived("RUN_STALLED", 62), derived("RUN_RECOVERED", 63)]) == [
        "firing"
    ]  # the second stall is announced: the window was over
    [resolved] = book.due(122 * MINUTE)
    assert resolved.state == "resolved"


def test_recovery_without_a_stall_is_ignored() -> None:
    """A resolve trigger for an alert that never fired creates no state at all."""
    book = AlertBook(RuleSet([STALLED]))
    assert offer_all(book, [derived("RUN_RECOVERED", 3)]) == []
    assert book.states == {}


def test_ids_are_stable_and_distinct() -> None:
    """Receivers deduplicate by id: the same decision must get the same id every time."""

    def ids() -> list[str]:
        book = AlertBook(RuleSet([STALLED]))
        out = []
        for event in [
            derived("RUN_STALLED", 0),
            derived("RUN_RECOVERED", 90),
            derived("RUN_STALLED", 200),
        ]:
            for trigger in book.rules.match_derived(event):
                notification = book.offer(trigger)
                if notification is not None:
                    out.append(notification.id)
        return out

    first = ids()
    assert first == ids()
    assert len(set(first)) == 3


def test_state_round_trips_through_storage() -> None:
    """Throttle state is stored with the projection, so a restart keeps throttling."""
    book = AlertBook(RuleSet([STALLED]))
    offer_all(book, [derived("RUN_STALLED", 0), derived("RUN_RECOVERED", 1)])
    [(rule, group, saved)] = book.take_dirty()
    restored = AlertBook(RuleSet([STALLED]), {(rule, group): AlertState.from_dict(saved)})
    [resolved] = restored.due(60 * MINUTE)
    assert resolved.state == "resolved"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("run {run_id} {status}", "run R1 failed"),
        ("{missing} here", "? here"),
        ("{broken", "{broken"),
    ],
)
def test_summary_rendering_never_fails(template: str, expected: str) -> None:
    """A summary template with a typo must still produce a message, not drop the alert."""
    assert render(template, {"run_id": "R1", "status": "failed"}) == expected


def test_labels_carry_rule_severity_and_run() -> None:
    """Alertmanager receivers route on alertname, severity and run_id labels."""
    book = AlertBook(RuleSet([FAILED]))
    trigger = Trigger(
        "run_failure", "run_id=R9", "fire", "e1", 0, {"run_id": "R9", "type": "run_failed"}
    )
    notification = book.offer(trigger)
    assert notification is not None
    assert notification.labels == {
        "alertname": "run_failure",
        "severity": "critical",
        "run_id": "R9",
    }


def test_a_resolved_alert_is_forgotten_once_its_window_is_over() -> None:
    """Per (rule, group) state must not outlive its use: every run that ever stalled would
    otherwise stay in memory and in `alert_state` for good."""
    book = AlertBook(RuleSet([STALLED]))
    assert offer_all(book, [derived("RUN_STALLED", 0), derived("RUN_RECOVERED", 10)]) == ["firing"]
    assert [n.state for n in book.due(60 * MINUTE)] == ["resolved"]
    book.take_dirty()
    # The resolution is dated at the recovery (minute 10): its window ends at minute 70.
    book.expire(69 * MINUTE)
    assert list(book.states) == [("run_stalled", "run_id=R1")], "inside the window: kept"
    book.expire(70 * MINUTE)
    assert book.states == {}
    assert book.take_expired() == [("run_stalled", "run_id=R1")]
    assert book.take_dirty() == []
    assert offer_all(book, [derived("RUN_STALLED", 121)]) == ["firing"], "a new incident"


def test_a_firing_or_held_alert_is_never_forgotten() -> None:
    book = AlertBook(RuleSet([STALLED]))
    offer_all(book, [derived("RUN_STALLED", 0, "A"), derived("RUN_RECOVERED", 5, "A")])
    offer_all(book, [derived("RUN_STALLED", 0, "B")])
    book.expire(50 * 60 * MINUTE)
    assert sorted(book.states) == [("run_stalled", "run_id=A"), ("run_stalled", "run_id=B")]
    assert book.take_expired() == []


def test_an_alert_forgotten_and_fired_again_in_one_batch_is_not_deleted() -> None:
    """The store deletes what `take_expired` lists after it writes the changed states: a
    state created again since must not be listed, or its row would be lost."""
    book = AlertBook(RuleSet([STALLED]))
    offer_all(book, [derived("RUN_STALLED", 0), derived("RUN_RECOVERED", 10)])
    book.due(60 * MINUTE)
    book.expire(70 * MINUTE)
    assert offer_all(book, [derived("RUN_STALLED", 71)]) == ["firing"]
    assert book.take_expired() == []
    assert [key for key, *_ in book.take_dirty()] == ["run_stalled"]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["RUN_STALLED", "RUN_RECOVERED", "RUN_COMPLETED", "run_failed"]),
            st.integers(0, 240),
            st.sampled_from(["R1", "R2", "R3"]),
        ),
        max_size=40,
    ),
    st.lists(st.integers(0, 400), max_size=8),
)
# Found by this test: an alert sent when its window ended and held back again left that
# window's end on top of the heap, and `has_due` took it for due.
@example(
    offers=[
        ("RUN_STALLED", 0, "R1"),
        ("RUN_STALLED", 60, "R1"),
        ("RUN_RECOVERED", 1, "R1"),
        ("RUN_RECOVERED", 61, "R1"),
    ],
    checks=[61],
)
def test_the_due_alerts_are_the_held_ones_whose_window_is_over(
    offers: list[tuple[str, int, str]], checks: list[int]
) -> None:
    """Found from a heap of window ends, the due alerts are still exactly the held-back ones
    whose throttle window is over, oldest notification first, whatever the order of
    triggers and checks."""
    book = AlertBook(RuleSet([STALLED, FAILED]))
    moments = sorted([(minute, 0, kind, run) for kind, minute, run in offers])
    moments += sorted((minute, 1, "", "") for minute in checks)
    for minute, is_check, kind, run in sorted(moments):
        if not is_check:
            offer_all(book, [derived(kind, minute, run, status="failed")])
            continue
        now = minute * MINUTE
        rules = book.rules.rules
        expected = sorted(
            (state.notified_at or 0, key)
            for key, state in book.states.items()
            if state.held is not None
            and (state.notified_at is None or now - state.notified_at >= rules[key[0]].throttle_us)
        )
        assert book.has_due(now) == bool(expected)
        due = book.due(now)
        assert [(n.rule, n.group_key) for n in due] == [k for _, k in expected]
        assert not book.has_due(now)


def test_a_trigger_and_a_derived_event_cross_processes_whole() -> None:
    """Both pickle as a tuple of their fields (a replay's workers send them by the
    thousand): every field comes back, and equal."""
    trigger = Trigger("rule", "run_id=r", "resolve", "h:1", 1_767_225_600_000_000, {"a": [1]})
    derived = DerivedEvent("RUN_COMPLETED", 1_767_225_600_000_001, "r", {"status": "failed"})
    for value in (trigger, derived):
        back = pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        assert type(back) is type(value)
        assert dataclasses.asdict(back) == dataclasses.asdict(value)
