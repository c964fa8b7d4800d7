"""Service levels: error budgets and multi-window burn rates of finished runs (contract §6).

A pure function of the SLO definitions, the finished runs and a `now` passed in. A run counts
at its `ended_at`, once terminal and not canceled; a window `w` at `now` holds the runs with
`now − w < ended_at ≤ now`. `evaluate` gives the figures `runwatch slo --json` prints;
`transitions` walks event time and says when an SLO's alert level was entered, raised or
ended (SLO_BURN, SLO_RECOVERED), the same way on every replay of the same runs.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Final, Literal

from .events import DerivedEvent

Sli = Literal["success", "duration"]
Level = Literal["page", "ticket"]

WINDOWS: Final[dict[str, int]] = {
    "5m": 300,
    "30m": 1800,
    "1h": 3600,
    "2h": 7200,
    "6h": 21600,
    "1d": 86400,
    "3d": 259200,
}
"""The burn-rate windows, in seconds, by the names the outputs use."""
WINDOWS_US: Final = {name: seconds * 1_000_000 for name, seconds in WINDOWS.items()}

ALERT_PAIRS: Final[tuple[tuple[Level, str, str, float], ...]] = (
    ("page", "1h", "5m", 14.4),
    ("page", "6h", "30m", 6.0),
    ("ticket", "1d", "2h", 3.0),
    ("ticket", "3d", "6h", 1.0),
)
"""(level, long window, short window, burn rate both must reach): the SRE workbook's
multi-window, multi-burn-rate alerts. A pair counts only when its long window holds at least
`min_events` runs."""

LEVEL_RANK: Final[dict[str | None, int]] = {None: 0, "ticket": 1, "page": 2}
GOOD_STATUS: Final = "succeeded"
BAD_STATUSES: Final = frozenset({"failed", "partial", "quarantined"})
"""`success` SLIs: the terminal statuses that count. Canceled runs never count."""
RUNS_NAMED: Final = 20
"""At most this many bad runs are named in an SLO_BURN (the newest of its long window)."""


@dataclass(frozen=True, slots=True)
class Slo:
    """One service level objective, as configured under `slos:`."""

    name: str
    sli: Sli
    objective: float
    window_s: float = 30 * 86400.0
    threshold_s: float | None = None
    min_events: int = 10

    def verdict(self, status: str, duration_s: float | None) -> bool | None:
        """True for a good run, False for a bad one, None when the run does not count."""
        if status != GOOD_STATUS and status not in BAD_STATUSES:
            return None
        if self.sli == "success":
            return status == GOOD_STATUS
        if duration_s is None or self.threshold_s is None:
            return None
        return duration_s <= self.threshold_s


FinishedRun = Sequence[Any]
"""(ended_at in UTC µs, status, duration_s[, run_id]) of one run."""


@dataclass(slots=True)
class Timeline:
    """One SLO's counted runs sorted by `ended_at`, with running totals of the bad ones, so
    that any window's counts cost two bisections."""

    times: list[int] = field(default_factory=list)
    bad_before: list[int] = field(default_factory=lambda: [0])
    bad_runs: list[tuple[int, str]] = field(default_factory=list)

    @classmethod
    def build(cls, slo: Slo, runs: Iterable[FinishedRun]) -> Timeline:
        counted = []
        for run in runs:
            verdict = slo.verdict(run[1], run[2])
            if verdict is not None:
                counted.append((run[0], not verdict, str(run[3]) if len(run) > 3 else ""))
        counted.sort()
        return cls(
            [time for time, _, _ in counted],
            [0, *accumulate(int(bad) for _, bad, _ in counted)],
            [(time, run_id) for time, bad, run_id in counted if bad and run_id],
        )

    def counts(self, now: int, window_us: int) -> tuple[int, int]:
        """(total, bad) of the runs with now − window < ended_at ≤ now."""
        high = bisect_right(self.times, now)
        low = bisect_right(self.times, now - window_us)
        return high - low, self.bad_before[high] - self.bad_before[low]

    def bad_ids(self, now: int, window_us: int) -> list[str]:
        """The newest bad runs of the window, newest first, at most RUNS_NAMED."""
        high = bisect_right(self.bad_runs, (now, "\U0010ffff"))
        low = bisect_right(self.bad_runs, (now - window_us, "\U0010ffff"))
        return [run_id for _, run_id in reversed(self.bad_runs[max(low, high - RUNS_NAMED) : high])]


def _clean(value: float) -> float:
    """Rounded to 10 decimals: 1 − 0.95 is 0.05000000000000004 in binary, and a burn rate of
    exactly 14.4 must not come out as 14.399999999999999 and miss its threshold."""
    return round(value, 10)


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


def burn_rates(
    slo: Slo, timeline: Timeline, now: int
) -> tuple[dict[str, float | None], dict[str, int]]:
    """Each window's burn rate (None when it holds no run) and its number of runs."""
    rates: dict[str, float | None] = {}
    totals: dict[str, int] = {}
    budget = 1.0 - slo.objective
    for name, seconds in WINDOWS.items():
        total, bad = timeline.counts(now, _us(seconds))
        totals[name] = total
        rates[name] = None if total == 0 else _clean(bad / total / budget)
    return rates, totals


def alert_level(
    rates: Mapping[str, float | None], totals: Mapping[str, int], min_events: int
) -> Level | None:
    """`page`, else `ticket`, else None: the first level one of whose pairs fires."""
    for level, long, short, factor in ALERT_PAIRS:
        long_rate, short_rate = rates[long], rates[short]
        if (
            totals[long] >= min_events
            and long_rate is not None
            and short_rate is not None
            and long_rate >= factor
            and short_rate >= factor
        ):
            return level
    return None


def level_at(slo: Slo, timeline: Timeline, now: int) -> Level | None:
    """`alert_level` of `slo` at `now`, counting only the windows its pairs need (a replay
    asks this at every instant a window changes)."""
    times, bad_before = timeline.times, timeline.bad_before
    high = bisect_right(times, now)
    if bad_before[high] == bad_before[bisect_right(times, now - WINDOWS_US["6h"])]:
        return None  # every short window is within 6h: without a bad run none fires
    budget = 1.0 - slo.objective

    def reaches(window: str, least: int, factor: float) -> bool:
        low = bisect_right(times, now - WINDOWS_US[window])
        total = high - low
        if total < least or total == 0:
            return False
        rate = (bad_before[high] - bad_before[low]) / total / budget
        return rate >= factor or (rate > factor - 1e-9 and _clean(rate) >= factor)

    for level, long, short, factor in ALERT_PAIRS:
        if reaches(long, slo.min_events, factor) and reaches(short, 1, factor):
            return level
    return None


def result(slo: Slo, timeline: Timeline, now: int) -> dict[str, Any]:
    """One SLO at `now`: the object `runwatch slo --json` prints for it."""
    total, bad = timeline.counts(now, _us(slo.window_s))
    rates, totals = burn_rates(slo, timeline, now)
    budget = 1.0 - slo.objective
    return {
        "name": slo.name,
        "sli": slo.sli,
        "objective": slo.objective,
        "window_s": slo.window_s,
        "total": total,
        "good": total - bad,
        "bad": bad,
        "ratio": None if total == 0 else _clean((total - bad) / total),
        "budget_remaining": None if total == 0 else _clean(1.0 - bad / total / budget),
        "burn_rates": rates,
        "alert": alert_level(rates, totals, slo.min_events),
    }


def evaluate(slos: Sequence[Slo], runs: Iterable[FinishedRun], now: int) -> list[dict[str, Any]]:
    """Every SLO at `now` (UTC µs) over the finished runs, in the order configured. Plain
    dicts: `name, sli, objective, window_s, total, good, bad, ratio, budget_remaining,
    burn_rates` (keyed "5m" … "3d") and `alert`; figures of an empty window are None."""
    rows = list(runs)
    return [result(slo, Timeline.build(slo, rows), now) for slo in slos]


def horizon_s(slos: Sequence[Slo]) -> float:
    """How far back the runs must reach for every window of every SLO."""
    return max([max(WINDOWS.values()), *(slo.window_s for slo in slos)])


def change(
    slo: Slo, timeline: Timeline, now: int, announced: str | None
) -> tuple[DerivedEvent | None, str | None]:
    """The derived event (if any) for `slo` at `now` given the level last announced, and
    the level announced from then on. A level is announced when entered or raised and
    holds until the SLO is back to none (a page that eases to a ticket stays a page)."""
    figures = result(slo, timeline, now)
    level = figures["alert"]
    if LEVEL_RANK[level] > LEVEL_RANK[announced]:
        long = next(pair[1] for pair in ALERT_PAIRS if pair[0] == level)
        data = _event_data(figures, level, announced)
        data["runs"] = timeline.bad_ids(now, _us(WINDOWS[long]))
        return DerivedEvent("SLO_BURN", now, None, data), level
    if level is None and announced is not None:
        return DerivedEvent("SLO_RECOVERED", now, None, _event_data(figures, None, announced)), None
    return None, announced


def _event_data(figures: dict[str, Any], level: str | None, previous: str | None) -> dict[str, Any]:
    return {
        "slo": figures["name"],
        "level": level,
        "previous_level": previous,
        "sli": figures["sli"],
        "objective": figures["objective"],
        "burn_rates": figures["burn_rates"],
        "budget_remaining": figures["budget_remaining"],
        "summary": _summary(figures, level),
    }


def _summary(figures: dict[str, Any], level: str | None) -> str:
    rates = figures["burn_rates"]
    shown = ", ".join(f"{k} {v:.1f}x" for k, v in rates.items() if v is not None) or "no runs"
    if level is None:
        return f"SLO {figures['name']} back within its error budget ({shown})"
    return f"SLO {figures['name']} burning its error budget: {level} ({shown})"


def transitions(
    slos: Sequence[Slo],
    runs: Iterable[FinishedRun],
    until: int,
    announced: Mapping[str, str | None] | None = None,
) -> tuple[list[DerivedEvent], dict[str, str | None]]:
    """SLO_BURN and SLO_RECOVERED in event time, up to `until`, for a replay: each SLO is
    judged at every instant one of its windows changes (a run enters them all at its
    `ended_at`, and leaves window w at `ended_at + w`), so the events and their times
    depend only on the runs. Returns them sorted by time, and the level announced at
    `until` per SLO."""
    rows = list(runs)
    levels = dict(announced or {})
    out: list[DerivedEvent] = []
    for slo in slos:
        timeline = Timeline.build(slo, rows)
        instants = set(timeline.times)
        for width in WINDOWS_US.values():
            instants.update([t + width for t in timeline.times])
        level = levels.get(slo.name)
        for instant in sorted(instants):
            if instant > until:
                break
            current = level_at(slo, timeline, instant)
            if LEVEL_RANK[current] > LEVEL_RANK[level] or (current is None and level is not None):
                event, level = change(slo, timeline, instant, level)
                if event is not None:
                    out.append(event)
        levels[slo.name] = level
    out.sort(key=lambda event: (event.time, event.data["slo"]))
    return out, levels


class SloBook:
    """The live service's view: the finished runs of the last `horizon_s` and the level each
    SLO last announced; `tick(now)` says what changed at `now` (the wall clock)."""

    def __init__(
        self,
        slos: Sequence[Slo],
        runs: Iterable[FinishedRun],
        announced: Mapping[str, str | None],
    ) -> None:
        self.slos = tuple(slos)
        self.horizon_us = _us(horizon_s(self.slos)) if self.slos else 0
        self.runs: dict[str, FinishedRun] = {str(run[3]): run for run in runs}
        self.levels = {slo.name: announced.get(slo.name) for slo in self.slos}
        self.timelines: list[Timeline] | None = None

    def note(self, run_ids: Iterable[str], runs: Iterable[FinishedRun]) -> None:
        """`run_ids` changed; `runs` are those of them that now count (the others left)."""
        for run_id in run_ids:
            self.runs.pop(run_id, None)
        self.runs.update((str(run[3]), run) for run in runs)
        self.timelines = None

    def tick(self, now: int) -> tuple[list[DerivedEvent], list[dict[str, Any]]]:
        """The SLO_BURN / SLO_RECOVERED due at `now`, and every SLO's figures."""
        if self.timelines is None:  # runs changed: prune what no window reaches, rebuild
            oldest = now - self.horizon_us
            self.runs = {k: run for k, run in self.runs.items() if run[0] > oldest}
            self.timelines = [Timeline.build(slo, self.runs.values()) for slo in self.slos]
        events, figures = [], []
        for slo, timeline in zip(self.slos, self.timelines, strict=True):
            event, self.levels[slo.name] = change(slo, timeline, now, self.levels[slo.name])
            if event is not None:
                events.append(event)
            figures.append(result(slo, timeline, now))
        return events, figures
