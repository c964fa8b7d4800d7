"""The SLO contract (§6): what counts, window edges, ratios, budgets, burn rates, the
page/ticket pairs with their `min_events` guard, and the event-time transitions."""

from __future__ import annotations

import pytest

from runwatch.projections.slo import Slo, SloBook, evaluate, transitions

S = 1_000_000
MIN = 60 * S
HOUR = 60 * MIN
NOW = 1_000 * 86400 * S

SUCCESS = Slo("ok", "success", 0.99, window_s=30 * 86400.0, min_events=1)


def run(ago_us: int, status: str = "succeeded", duration: float | None = 10.0, rid: str = ""):
    return (NOW - ago_us, status, duration, rid or f"r{ago_us}-{status}")


def test_a_run_counts_once_terminal_and_not_canceled() -> None:
    """Canceled runs (and unfinished ones) say nothing about reliability; partial and
    quarantined runs are failures the budget must pay for."""
    runs = [
        run(MIN, "succeeded"),
        run(MIN, "failed"),
        run(MIN, "partial"),
        run(MIN, "quarantined"),
        run(MIN, "canceled"),
        run(MIN, "running"),
    ]
    (out,) = evaluate([SUCCESS], runs, NOW)
    assert (out["total"], out["good"], out["bad"]) == (4, 1, 3)
    assert out["ratio"] == 0.25


def test_window_edges_exclude_now_minus_w_and_include_now() -> None:
    """`now − w < ended_at ≤ now`: a run ending exactly w ago has left the window, one
    ending exactly now is in it, and one in the future is not counted yet."""
    runs = [
        (NOW - 5 * MIN, "failed", 1.0, "edge"),  # exactly 5m ago: out of 5m, in 30m
        (NOW - 5 * MIN + 1, "failed", 1.0, "inside"),
        (NOW, "succeeded", 1.0, "now"),
        (NOW + 1, "failed", 1.0, "future"),
    ]
    (out,) = evaluate([SUCCESS], runs, NOW)
    rates = out["burn_rates"]
    assert rates["5m"] == pytest.approx((1 / 2) / 0.01)
    assert rates["30m"] == pytest.approx((2 / 3) / 0.01)
    assert out["total"] == 3


def test_budget_burn_rates_and_empty_windows() -> None:
    """budget_remaining may go negative; a window without runs has no burn rate (null, not
    0: missing data is not good news)."""
    slo = Slo("ok", "success", 0.9, window_s=86400.0, min_events=1)
    runs = [run(3 * HOUR, "failed"), *(run(3 * HOUR + i, "succeeded") for i in range(1, 4))]
    (out,) = evaluate([slo], runs, NOW)
    assert out["window_s"] == 86400.0
    assert out["ratio"] == 0.75
    assert out["budget_remaining"] == pytest.approx(1 - 1 / (0.1 * 4))
    assert out["burn_rates"]["5m"] is None and out["burn_rates"]["1h"] is None
    assert out["burn_rates"]["6h"] == pytest.approx(0.25 / 0.1)
    assert out["budget_remaining"] < 0
    assert out["alert"] == "ticket", "3d and 6h both burn at 2.5x (≥ 1)"
    (empty,) = evaluate([slo], [], NOW)
    assert empty["total"] == 0 and empty["ratio"] is None and empty["budget_remaining"] is None
    assert set(empty["burn_rates"]) == {"5m", "30m", "1h", "2h", "6h", "1d", "3d"}


def test_duration_sli_counts_runs_within_the_threshold_as_good() -> None:
    """A latency SLO is the share of runs under a threshold: ≤ is good, a second more is bad,
    and a failed run that was quick is still good for latency."""
    slo = Slo("fast", "duration", 0.5, threshold_s=600.0, min_events=1)
    runs = [
        run(MIN, "succeeded", 600.0),
        run(MIN, "failed", 30.0),
        run(MIN, "succeeded", 601.0),
        run(MIN, "canceled", 1.0),
    ]
    (out,) = evaluate([slo], runs, NOW)
    assert (out["total"], out["good"], out["bad"]) == (3, 2, 1)


def burst(bad: int, good: int, within_us: int) -> list[tuple[int, str, float, str]]:
    out = [run(within_us * i // max(bad, 1), "failed", rid=f"b{i}") for i in range(bad)]
    return out + [run(within_us * i // max(good, 1), rid=f"g{i}") for i in range(good)]


def test_page_when_the_fast_pair_burns_and_min_events_guards_low_traffic() -> None:
    """A burst of failures pages; the same burst with fewer runs than `min_events` in the
    long window pages nobody (a pipeline with three runs an hour must not page on one)."""
    runs = burst(bad=5, good=5, within_us=4 * MIN)
    (paged,) = evaluate([Slo("ok", "success", 0.99, min_events=10)], runs, NOW)
    assert paged["burn_rates"]["1h"] == pytest.approx(50.0)
    assert paged["alert"] == "page"
    (guarded,) = evaluate([Slo("ok", "success", 0.99, min_events=11)], runs, NOW)
    assert guarded["alert"] is None


def test_page_needs_both_windows_of_a_pair() -> None:
    """An old burst keeps the long window hot but the short one cold: no page (the alert
    resets quickly once the burning stops)."""
    runs = burst(bad=10, good=0, within_us=10 * MIN)
    later = [(t - 20 * MIN, *rest) for t, *rest in runs]  # ended 20-30 min ago
    (out,) = evaluate([SUCCESS], later, NOW)
    assert out["burn_rates"]["5m"] is None
    assert out["alert"] == "page", "the 6h/30m pair still fires"
    oldest = [(t - 40 * MIN, *rest) for t, *rest in runs]
    (out,) = evaluate([SUCCESS], oldest, NOW)
    assert out["burn_rates"]["30m"] is None and out["alert"] == "ticket"


def test_ticket_pairs() -> None:
    """A slow burn (3× over a day and two hours) opens a ticket, not a page."""
    slo = Slo("ok", "success", 0.9, min_events=10)
    runs = [run(HOUR * i // 2, "failed" if i % 10 < 3 else "succeeded") for i in range(40)]
    (out,) = evaluate([slo], runs, NOW)
    assert out["burn_rates"]["1d"] == pytest.approx(3.0)
    assert out["burn_rates"]["2h"] is not None and out["burn_rates"]["2h"] >= 3.0
    assert out["alert"] == "ticket"
    (guarded,) = evaluate([Slo("ok", "success", 0.9, min_events=41)], runs, NOW)
    assert guarded["alert"] is None


def test_transitions_burn_then_recover_in_event_time_deterministically() -> None:
    """A replay judges SLOs at every instant a window changes: a burst pages at the run that
    tips it, and recovers the moment the last bad run leaves the windows that keep it
    alerting; the same runs in any order give the same events."""
    runs = burst(bad=10, good=0, within_us=2 * MIN)
    early, levels = transitions([SUCCESS], runs, until=NOW + 3 * HOUR)
    assert [e.type for e in early] == ["SLO_BURN"] and levels == {"ok": "page"}
    events, levels = transitions([SUCCESS], runs, until=NOW + 7 * HOUR)
    kinds = [(e.type, e.data["level"]) for e in events]
    assert kinds == [("SLO_BURN", "page"), ("SLO_RECOVERED", None)]
    burn, recovered = events
    assert burn.time == min(t for t, *_ in runs), "min_events=1: the first failure pages"
    assert burn.data["slo"] == "ok" and burn.data["runs"]
    # The page pairs stop 30 min after the last failure; 3d/6h keeps a ticket until that
    # failure leaves the 6h window. A page eased to a ticket stays announced until then.
    assert recovered.time == max(t for t, *_ in runs) + 6 * HOUR and levels == {"ok": None}
    again, _ = transitions([SUCCESS], list(reversed(runs)), until=NOW + 7 * HOUR)
    assert [(e.type, e.time, e.data) for e in again] == [(e.type, e.time, e.data) for e in events]


def test_live_book_announces_a_level_once_and_recovers() -> None:
    """The service ticks every second: a level is announced when entered or raised, never
    again while it holds, and SLO_RECOVERED once it is back to none."""
    book = SloBook([SUCCESS], [], {})
    runs = burst(bad=3, good=0, within_us=MIN)
    book.note([r[3] for r in runs], runs)
    first, figures = book.tick(NOW)
    assert [e.type for e in first] == ["SLO_BURN"] and figures[0]["alert"] == "page"
    assert book.tick(NOW + S)[0] == []
    recovered, figures = book.tick(NOW + 4 * 86400 * S)
    assert [e.type for e in recovered] == ["SLO_RECOVERED"] and figures[0]["alert"] is None
    resumed = SloBook([SUCCESS], runs, {"ok": "page"})
    assert resumed.tick(NOW)[0] == [], "a restart knows the level already announced"


def test_a_burn_rate_exactly_at_its_threshold_fires() -> None:
    """1 − 0.7 is 0.30000000000000004 in binary: 3 bad runs of 10 burn exactly 1×, which
    must open the ticket (≥), not miss it by a rounding error."""
    slo = Slo("ok", "success", 0.7, min_events=10)
    runs = [run(MIN + i, "failed" if i < 3 else "succeeded") for i in range(10)]
    (out,) = evaluate([slo], runs, NOW)
    assert out["burn_rates"]["3d"] == 1.0 and out["burn_rates"]["6h"] == 1.0
    assert out["alert"] == "ticket"
    (fewer,) = evaluate([slo], runs[1:], NOW)
    assert fewer["burn_rates"]["3d"] < 1.0 and fewer["alert"] is None


def test_the_replay_sweep_agrees_with_evaluate_at_every_instant() -> None:
    """Replay judges levels with a lean path (`level_at`); it must say exactly what the full
    figures say, at window edges too."""
    import random

    from runwatch.projections.slo import WINDOWS_US, Timeline, level_at

    rng = random.Random(11)
    for objective, min_events in ((0.9, 3), (0.99, 1), (0.7, 10)):
        slo = Slo("x", "success", objective, min_events=min_events)
        runs = [
            (NOW - rng.randrange(0, 3 * 86400) * S, rng.choice(["succeeded"] * 3 + ["failed"]), 1.0)
            for _ in range(200)
        ]
        timeline = Timeline.build(slo, runs)
        instants = {t + w for t, *_ in runs for w in (0, *WINDOWS_US.values())}
        for instant in sorted(instants)[::7]:
            (full,) = evaluate([slo], runs, instant)
            assert level_at(slo, timeline, instant) == full["alert"], instant
