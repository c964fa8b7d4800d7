"""What the projection's tables lack, gathered while a replay decodes the logs: per-file
clock skew, stall gaps, events per hour, failures with normalised messages, tool-call
durations. `LogObserver` is the per-event hook of `replay` (`Observer`); `analyze` reads it.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from itertools import pairwise
from typing import Any, Final

from runwatch.projections import ORCHESTRATOR, PATTERN, Event, format_time
from runwatch.sinks.reports import ERROR_FIELDS
from runwatch.stream.core.decode import BadField, parse_time
from runwatch.stream.errors import UsageError

MAX_MESSAGE: Final = 500
_ABSENT: Final = object()
SKEW_US: Final = 1_000_000
FUTURE_US: Final = 300_000_000
HOUR_US: Final = 3_600_000_000
_NOT_FAILED: Final = frozenset({"succeeded", "canceled", "cancelled", "skipped"})
_ERROR_SEVERITIES: Final = frozenset({"error", "critical"})
_RELATIVE: Final = re.compile(r"(\d+(?:\.\d+)?)(s|m|h|d|w)")
_UNIT_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NORMALISE: Final = tuple(
    (re.compile(pattern, flags), label)
    for pattern, flags, label in (
        (r"\"[^\"]*\"|'[^']*'", 0, "<str>"),
        (
            r"\d{4}-\d\d-\d\d(?:[T ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:?\d\d)?)?",
            0,
            "<time>",
        ),
        (r"(?:[A-Za-z]:)?[\w.~<>-]*(?:[/\\][\w.~<>-]*)+", 0, "<path>"),
        (r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I, "<uuid>"),
        (r"\b(?:[A-Z]+-)*[0-9A-HJKMNP-TV-Z]{26}\b", 0, "<id>"),
        (r"\b(?:0x[0-9a-f]+|(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,})\b", re.I, "<hex>"),
        (r"\d+(?:\.\d+)?", 0, "<n>"),
    )
)
_SPACES: Final = re.compile(r"\s+")

Row = dict[str, Any]
FailureKey = tuple[str, str, str, str]
"""(scope, name, run id or "", normalised message)."""


def normalise(message: str) -> str:
    """The message with its variable parts replaced, so that similar errors group."""
    text = message[:MAX_MESSAGE]
    for pattern, label in _NORMALISE:
        text = pattern.sub(label, text)
    return _SPACES.sub(" ", text).strip() or "(no message)"


@dataclass(frozen=True, slots=True)
class Window:
    """[since, until) in UTC microseconds; None is open."""

    since: int | None = None
    until: int | None = None

    @property
    def lo(self) -> int:
        return -(1 << 62) if self.since is None else self.since

    @property
    def hi(self) -> int:
        return 1 << 62 if self.until is None else self.until

    def bounds(self) -> tuple[str | None, str | None]:
        """The window as stored time strings, which compare like the times they spell."""
        return format_time(self.since), format_time(self.until)


ALL_TIME: Final = Window()
"""No --since and no --until."""


def parse_moment(
    text: str, option: str, now: datetime, *, end_of_day: bool = False, command: str = "analyze"
) -> int:
    """An ISO time, a date, or a duration back from `now` → UTC microseconds."""
    text = text.strip()
    if relative := _RELATIVE.fullmatch(text):
        seconds = float(relative[1]) * _UNIT_S[relative[2]]
        return parse_time((now - timedelta(seconds=seconds)).isoformat())
    try:
        day = date.fromisoformat(text) if len(text) == 10 else None
        if day is not None:
            return parse_time((day + timedelta(days=int(end_of_day))).isoformat())
        return parse_time(text, option)
    except (ValueError, BadField):
        pass
    raise UsageError(
        f"{command}: {option} {text!r} is not an ISO-8601 time, a date "
        "(2026-01-05) or a duration back from now (90m, 12h, 7d)"
    )


class FileStats:
    """Skew bookkeeping of one source file: first and last time of each group in it."""

    __slots__ = ("backwards", "firsts", "future", "lasts", "limit", "worst_us")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.firsts: dict[str, int] = {}
        self.lasts: dict[str, int] = {}
        self.backwards = 0
        self.future = 0
        self.worst_us = 0

    def step_back(self, by_us: int) -> None:
        self.backwards += 1
        self.worst_us = max(self.worst_us, by_us)


class LogObserver:
    """What the tables lack, gathered from every event a replay decodes (`replay.Observer`).
    Skew uses every line; stall gaps and counts use fresh events only (a repeat has its
    original's time), so each event id counts once however many copies the input holds."""

    def __init__(self, window: Window, stall_after_us: int) -> None:
        self.window = window
        self.lo, self.hi = window.lo, window.hi
        self.stall_after_us = stall_after_us
        self.files: dict[str, FileStats] = {}
        self.times: defaultdict[str, list[int]] = defaultdict(list)
        self.spans: defaultdict[str, list[tuple[int, int]]] = defaultdict(list)
        self.hours: dict[int, int] = {}
        self.failures: Counter[FailureKey] = Counter()
        self.examples: dict[FailureKey, str] = {}
        self.tool_ms: dict[str, dict[int, int]] = {}
        self.pattern_tools: dict[str, str] = {}
        self._normal: dict[str, str] = {}

    def observe(self, event: Event, source: str, fresh: bool) -> None:
        """Skew from every line of the file, gaps and counts from fresh events. Runs for
        every line of a replay, so it is written for speed."""
        time = event.time
        file = self.files.get(source) or self._open(source)
        if event.family == ORCHESTRATOR:
            group = event.run_id or ""
            if group and fresh:  # a repeat has its original's time: no gap of its own
                self.times[group].append(time)
        else:
            group = event.task or ""
            if type(context := event.payload.get("context")) is dict and isinstance(
                tool := context.get("tool"), str
            ):
                self.pattern_tools[group] = tool
        inside = self.lo <= time < self.hi
        last = file.lasts.get(group)
        if last is None:
            file.firsts[group] = time
        elif time < last - SKEW_US and inside:
            file.step_back(last - time)
        file.lasts[group] = time
        if inside:
            if time > file.limit:
                file.future += 1
            if fresh:
                self._count(event, 1)

    def forget(self, event: Event) -> None:
        """Take back the counts of an event another worker had already counted."""
        if self.lo <= event.time < self.hi:
            self._count(event, -1)

    def empty(self) -> LogObserver:
        return LogObserver(self.window, self.stall_after_us)

    def merge(self, later: LogObserver) -> None:
        """Join an observer of the input that follows this one's (replay merges in order)."""
        for source, theirs in later.files.items():
            mine = self.files.get(source)
            if mine is None:
                self.files[source] = theirs
            else:
                self._join_file(mine, theirs)
        for run_id, times in later.times.items():
            self.times[run_id].extend(times)
        for run_id, spans in later.spans.items():
            self.spans[run_id].extend(spans)
        _add(self.hours, later.hours)
        self.failures.update(later.failures)
        for key, example in later.examples.items():
            self.examples.setdefault(key, example)
        for tool, histogram in later.tool_ms.items():
            _add(self.tool_ms.setdefault(tool, {}), histogram)
        self.pattern_tools.update(later.pattern_tools)

    def __getstate__(self) -> dict[str, Any]:
        """A worker's raw run times travel as spans: a few pairs per run instead of every time."""
        self._compact()
        return {**self.__dict__, "_normal": {}}

    def incidents(self, runs: Mapping[str, tuple[int | None, bool]], horizon: int) -> Iterator[Row]:
        """Silences longer than stall_after while a run was open; `runs` maps a run to its
        ended_at (µs or None) and whether it is terminal now."""
        self._compact()
        gap = self.stall_after_us
        for run_id in sorted(self.spans):
            spans = _join_spans(self.spans[run_id], gap)
            ended, terminal = runs.get(run_id, (None, False))
            for (_, quiet_from), (resumed, _) in pairwise(spans):
                if ended is None or quiet_from < ended:
                    yield incident(run_id, quiet_from, resumed, resumed)
            last = spans[-1][1]
            if not terminal and horizon - last > gap:
                yield incident(run_id, last, None, horizon)

    def _open(self, source: str) -> FileStats:
        try:
            limit = os.stat(source).st_mtime_ns // 1000 + FUTURE_US
        except OSError:
            limit = 1 << 62
        file = self.files[source] = FileStats(limit)
        return file

    def _join_file(self, mine: FileStats, theirs: FileStats) -> None:
        for group, first in theirs.firsts.items():
            last = mine.lasts.get(group)
            if last is None:
                mine.firsts[group] = first
            elif first < last - SKEW_US and self.lo <= first < self.hi:
                mine.step_back(last - first)
        mine.lasts.update(theirs.lasts)
        mine.backwards += theirs.backwards
        mine.future += theirs.future
        mine.worst_us = max(mine.worst_us, theirs.worst_us)

    def _count(self, event: Event, sign: int) -> None:
        hours, hour = self.hours, event.time // HOUR_US
        hours[hour] = hours.get(hour, 0) + sign
        raw, payload = event.raw, event.payload
        if event.family == PATTERN:
            if raw.get("status") == "failed" or event.type.endswith(".failed"):
                self._fail(event, (("type", event.type, ""),), sign)
            return
        tool = _tool(raw, payload)
        if tool is not None and (ms := _duration_ms(payload)) is not None:
            histogram = self.tool_ms.get(tool) or self.tool_ms.setdefault(tool, {})
            histogram[ms] = histogram.get(ms, 0) + sign
        if _failed(event):
            scopes = [("type", event.type, "")]
            if event.task is not None:
                scopes.append(("task", event.task, event.run_id or ""))
            if tool is not None:
                scopes.append(("tool", tool, ""))
            self._fail(event, scopes, sign)

    def _fail(self, event: Event, scopes: Iterable[tuple[str, str, str]], sign: int) -> None:
        raw = _error_text(event)
        normal = self._normal.get(raw)
        if normal is None:
            if len(self._normal) > 10_000:
                self._normal.clear()
            normal = self._normal[raw] = normalise(raw)
        for scope, name, run_id in scopes:
            key = (scope, name, run_id, normal)
            self.failures[key] += sign
            self.examples.setdefault(key, raw)

    def _compact(self) -> None:
        gap = self.stall_after_us
        for run_id, times in self.times.items():
            self.spans[run_id] = _join_spans(self.spans[run_id] + _spans(times, gap), gap)
        self.times.clear()


def _spans(times: list[int], gap: int) -> list[tuple[int, int]]:
    """Sorted times as runs of neighbours at most `gap` apart: (first, last) each."""
    out: list[tuple[int, int]] = []
    for time in sorted(times):
        if out and time - out[-1][1] <= gap:
            out[-1] = (out[-1][0], time)
        else:
            out.append((time, time))
    return out


def _join_spans(spans: list[tuple[int, int]], gap: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start - out[-1][1] <= gap:
            out[-1] = (out[-1][0], max(end, out[-1][1]))
        else:
            out.append((start, end))
    return out


def incident(run_id: str, quiet_from: int, resumed: int | None, until: int) -> Row:
    return {
        "run_id": run_id,
        "silent_from": format_time(quiet_from),
        "resumed_at": format_time(resumed),
        "silent_s": round((until - quiet_from) / 1e6, 3),
        "open": resumed is None,
    }


def _tool(raw: Mapping[str, Any], payload: Mapping[str, Any]) -> str | None:
    """`tool_id` when the line has that field (the event bus's; null: no tool), else `tool`,
    `payload.tool` or `payload.tool_name`."""
    tool = raw.get("tool_id", _ABSENT)
    if tool is _ABSENT:
        tool = raw.get("tool") or payload.get("tool") or payload.get("tool_name")
    return tool if type(tool) is str and tool else None


def _duration_ms(payload: Mapping[str, Any]) -> int | None:
    """`duration_ms`, else `duration_s` or `duration_seconds`, in whole milliseconds."""
    value, scale = payload.get("duration_ms"), 1
    if value is None:
        value, scale = payload.get("duration_s", payload.get("duration_seconds")), 1000
    if (type(value) is int or type(value) is float) and value >= 0:
        return round(value * scale)
    return None


def _add(into: dict[Any, int], counts: Mapping[Any, int]) -> None:
    for key, count in counts.items():
        into[key] = into.get(key, 0) + count


def _failed(event: Event) -> bool:
    """The contract's error event, or a completion whose status says it failed."""
    kind = event.type
    if event.severity in _ERROR_SEVERITIES or kind.endswith("_failed"):
        return True
    if kind == "step_completed":
        return event.payload.get("status") not in _NOT_FAILED
    return kind == "run_completed" and event.payload.get("status") == "failed"


def _error_text(event: Event) -> str:
    """The most specific error text: the payload's, the line's own error, an exit code, and
    only then the line's generic message ("tool call completed")."""
    payload, raw = event.payload, event.raw
    candidates = [
        *(payload.get(f) for f in ERROR_FIELDS),
        raw.get("error_message"),
        raw.get("error"),
    ]
    if isinstance(code := payload.get("exit_code"), int) and code:
        candidates.append(f"exit code {code}")
    for value in [*candidates, raw.get("message"), raw.get("reason")]:
        if isinstance(value, Mapping):
            value = value.get("message")
        if isinstance(value, str) and value.strip():
            return value[:MAX_MESSAGE]
    return ""


# --- the analysis -------------------------------------------------------------------------
