"""Alert decisions: which events trigger which rules, and when a notification is due.

Everything here runs in event time and is a pure function of the triggers offered and the
`now` passed in, so a replay of the same logs reaches the same decisions, and the state that
throttling needs is stored with the projection (it is part of the fold, not of delivery).

Per (rule, group) an alert is `firing` or `resolved`. A notification goes out when the state
to announce differs from the last one announced, or when a new trigger fires after `throttle`
has passed since the last notification. Inside the throttle window changes are held back, and
`due(now)` sends the latest state once the window is over — so a stall that flaps between
stalled and recovered gives one notification, then (with `send_resolved`) one resolution.
"""

from __future__ import annotations

import fnmatch
import hashlib
import heapq
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from .events import DerivedEvent, Event, format_time, pickled_as_tuple

SEVERITY_RANK: Final = {"debug": 0, "info": 1, "warning": 2, "error": 3, "critical": 4}
"""Event severities, as decoding normalises them (§1)."""

ALERT_SEVERITIES: Final = ("info", "low", "medium", "warning", "high", "critical")

Role = Literal["fire", "resolve"]
_COMPARISON: Final = re.compile(r"^\s*(>=|<=|!=|==|>|<)\s*(.+?)\s*$")
_OPERATORS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass(frozen=True, slots=True)
class Condition:
    """One field test: equality, membership in a list, or a comparison such as `>= error`."""

    field: str
    op: str
    value: Any

    @classmethod
    def parse(cls, name: str, spec: Any) -> Condition:
        if isinstance(spec, list):
            return cls(name, "in", frozenset(str(v) for v in spec))
        if isinstance(spec, str) and (match := _COMPARISON.match(spec)):
            return cls(name, match.group(1), _comparable(name, match.group(2)))
        return cls(name, "==", str(spec) if not isinstance(spec, bool | int | float) else spec)

    def holds(self, fields: Mapping[str, Any]) -> bool:
        value = fields.get(self.field)
        if value is None:
            return self.op == "!="
        if self.op == "in":
            return str(value) in self.value
        if self.op in ("==", "!=") and not isinstance(self.value, int | float):
            return _OPERATORS[self.op](str(value), self.value)
        left = _comparable(self.field, value)
        try:
            return _OPERATORS[self.op](left, self.value)
        except TypeError:
            return False


def _comparable(name: str, value: Any) -> Any:
    """Severities compare by rank, numbers as numbers, anything else as text."""
    if name == "severity" and str(value).lower() in SEVERITY_RANK:
        return SEVERITY_RANK[str(value).lower()]
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


@dataclass(frozen=True, slots=True)
class Matcher:
    """An event type glob and the conditions its fields must meet."""

    type: str
    where: tuple[Condition, ...] = ()

    def matches_type(self, event_type: str) -> bool:
        return fnmatch.fnmatchcase(event_type, self.type)


@dataclass(frozen=True, slots=True)
class Rule:
    """When to alert, how loudly, through which channels, and how often at most."""

    name: str
    severity: str
    channels: tuple[str, ...]
    fire: tuple[Matcher, ...]
    resolve: tuple[Matcher, ...] = ()
    group_by: tuple[str, ...] = ("run_id",)
    throttle_us: int = 0
    send_resolved: bool = False
    summary: str = "{type} {run_id}"
    severity_by: tuple[str, tuple[tuple[str, str], ...]] | None = None
    """(field, ((value, severity), ...)): the triggering event's field picks the severity
    (e.g. an SLO_BURN's level: page → critical); other values keep `severity`."""
    runbook_url: str = ""

    def matchers(self) -> Iterator[tuple[Role, Matcher]]:
        for matcher in self.fire:
            yield "fire", matcher
        for matcher in self.resolve:
            yield "resolve", matcher

    def severity_of(self, fields: Mapping[str, Any]) -> str:
        if self.severity_by is None:
            return self.severity
        name, choices = self.severity_by
        value = fields.get(name)
        return next((severity for key, severity in choices if key == value), self.severity)


@pickled_as_tuple
@dataclass(frozen=True, slots=True)
class Trigger:
    """An event that matched a rule: enough to decide, and to say what happened."""

    rule: str
    group_key: str
    role: Role
    event_id: str
    time: int
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Notification:
    """A decided notification. `id` is stable: the same logs always give the same ids."""

    id: str
    rule: str
    group_key: str
    state: Literal["firing", "resolved"]
    severity: str
    channels: tuple[str, ...]
    event_id: str
    event_time: int
    starts_at: int
    ends_at: int | None
    suppressed: int
    labels: dict[str, str]
    summary: str
    event: dict[str, Any]
    runbook_url: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "alert_id": self.id,
            "rule": self.rule,
            "state": self.state,
            "severity": self.severity,
            "group_key": self.group_key,
            "labels": self.labels,
            "summary": self.summary,
            "run_id": self.labels.get("run_id"),
            "event": self.event,
            "event_id": self.event_id,
            "event_time": format_time(self.event_time),
            "starts_at": format_time(self.starts_at),
            "ends_at": format_time(self.ends_at),
            "suppressed": self.suppressed,
            "runbook_url": self.runbook_url,
        }


class RuleSet:
    """The rules, with a per-event-type cache of which ones can match at all: most event
    types match none, and then the cost per event is one dict lookup."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = {rule.name: rule for rule in rules}
        self.by_type: dict[str, tuple[tuple[Rule, Role, Matcher], ...]] = {}
        """Event type → the rules that can match it; an empty tuple for most types, which the
        fold's hot loop checks inline before it pays for a call."""

    def candidates(self, event_type: str) -> tuple[tuple[Rule, Role, Matcher], ...]:
        found = self.by_type.get(event_type)
        if found is None:
            found = tuple(
                (rule, role, matcher)
                for rule in self.rules.values()
                for role, matcher in rule.matchers()
                if matcher.matches_type(event_type)
            )
            if len(self.by_type) < 10_000:
                self.by_type[event_type] = found
        return found

    def match_event(self, event: Event) -> list[Trigger]:
        """Triggers for one accepted input event (usually none). Conditions read the few
        fields they name; the whole flat view is built only for an event that triggers."""
        candidates = self.candidates(event.type)
        if not candidates:
            return []
        return _triggers(
            candidates, event.id, event.time, _EventView(event), lambda: event_fields(event)
        )

    def match_derived(self, event: DerivedEvent) -> list[Trigger]:
        """Triggers for one derived event."""
        candidates = self.candidates(event.type)
        if not candidates:
            return []
        fields = event.to_dict()
        return _triggers(candidates, derived_id(event), event.time, fields, lambda: fields)


def _triggers(
    candidates: tuple[tuple[Rule, Role, Matcher], ...],
    event_id: str,
    time: int,
    view: Mapping[str, Any],
    fields: Callable[[], dict[str, Any]],
) -> list[Trigger]:
    out: dict[tuple[str, Role], Trigger] = {}
    for rule, role, matcher in candidates:
        if (rule.name, role) not in out and all(c.holds(view) for c in matcher.where):
            group = ",".join(f"{k}={view.get(k)}" for k in rule.group_by)
            out[(rule.name, role)] = Trigger(rule.name, group, role, event_id, time, fields())
    return list(out.values())


class _EventView(Mapping[str, Any]):
    """`event_fields(event)` read key by key, without building it."""

    __slots__ = ("event",)

    def __init__(self, event: Event) -> None:
        self.event = event

    def __getitem__(self, key: str) -> Any:
        event = self.event
        own = _PATTERN_FIELDS if event.family == "p" else _TASK_FIELDS
        field = _COMMON.get(key) or own.get(key)
        if field is not None:
            return field(event)
        for source in (event.raw, event.payload):  # the precedence of event_fields
            value = source.get(key, _MISSING)
            if value is not _MISSING and _scalar(value):
                return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(event_fields(self.event))

    def __len__(self) -> int:
        return len(event_fields(self.event))


_MISSING: Final = object()
_COMMON: Final[dict[str, Callable[[Event], Any]]] = {
    "type": lambda e: e.type,
    "event_id": lambda e: e.id,
    "event_time": lambda e: format_time(e.time),
    "severity": lambda e: e.severity,
    "run_id": lambda e: e.run_id,
}
_PATTERN_FIELDS: Final[dict[str, Callable[[Event], Any]]] = {"pattern_run_id": lambda e: e.task}
_TASK_FIELDS: Final[dict[str, Callable[[Event], Any]]] = {
    "task_id": lambda e: e.task,
    "workstream_id": lambda e: e.workstream,
}


def event_fields(event: Event) -> dict[str, Any]:
    """The flat view of an input event that conditions and summaries read: the event's
    scalar fields and payload scalars, with the normalised fields taking precedence."""
    fields: dict[str, Any] = {k: v for k, v in event.payload.items() if _scalar(v)}
    fields.update((k, v) for k, v in event.raw.items() if _scalar(v))
    fields.update(
        type=event.type,
        event_id=event.id,
        event_time=format_time(event.time),
        severity=event.severity,
        run_id=event.run_id,
    )
    if event.family == "p":
        fields["pattern_run_id"] = event.task
    else:
        fields["task_id"] = event.task
        fields["workstream_id"] = event.workstream
    return fields


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def derived_id(event: DerivedEvent) -> str:
    """A stable id for a derived event: what it is, about which run, and when."""
    text = f"{event.type}\x1f{event.run_id}\x1f{event.time}\x1f{event.data.get('status', '')}"
    return "d:" + hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


@dataclass(slots=True)
class AlertState:
    """What one (rule, group) alert is doing, and what was last announced about it."""

    current: str = "resolved"
    starts_at: int = 0
    ends_at: int | None = None
    notified: str | None = None
    notified_at: int | None = None
    suppressed: int = 0
    held: Trigger | None = None
    severity: str | None = None
    """The severity last announced as firing: its resolution carries the same labels."""

    def to_dict(self) -> dict[str, Any]:
        held = self.held
        return {
            "current": self.current,
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "notified": self.notified,
            "notified_at": self.notified_at,
            "suppressed": self.suppressed,
            "held": None
            if held is None
            else [held.rule, held.group_key, held.role, held.event_id, held.time, held.fields],
            "severity": self.severity,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlertState:
        held = data["held"]
        return cls(
            data["current"],
            data["starts_at"],
            data["ends_at"],
            data["notified"],
            data["notified_at"],
            data["suppressed"],
            None if held is None else Trigger(*held),
            data.get("severity"),
        )


@dataclass
class AlertBook:
    """Every (rule, group) alert's state; `offer` and `due` return the notifications to send.

    A resolved alert with nothing held back, whose throttle window is over, decides nothing
    that a fresh state would decide differently, so `expire` forgets it (memory is bounded
    by the alerts in flight, not by every run that ever alerted). Its next trigger starts
    afresh; only the `suppressed` count of the old incident is lost with it."""

    rules: RuleSet
    states: dict[tuple[str, str], AlertState] = field(default_factory=dict)
    dirty: set[tuple[str, str]] = field(default_factory=set)
    held: set[tuple[str, str]] = field(default_factory=set)
    held_until: list[tuple[int, tuple[str, str]]] = field(default_factory=list)
    """A heap of (when the window ends, key) of the held alerts, so that finding the due ones
    costs what is due, not every alert held; stale entries are checked."""
    expiring: list[tuple[int, tuple[str, str]]] = field(default_factory=list)
    """A heap of (when the window ends, key) of resolved alerts; stale entries are checked."""
    expired: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for key, state in self.states.items():
            if state.held is not None:
                self._hold(key, state)
            self._settle(key, state)

    def offer(self, trigger: Trigger) -> Notification | None:
        rule = self.rules.rules.get(trigger.rule)
        if rule is None:
            return None
        key = (trigger.rule, trigger.group_key)
        state = self.states.get(key)
        if state is None:
            if trigger.role == "resolve":
                return None  # nothing is firing: nothing to resolve
            state = self.states[key] = AlertState()
        self.dirty.add(key)
        if trigger.role == "fire":
            notification = self._fire(rule, state, trigger)
        else:
            notification = self._resolve(rule, state, trigger)
        if state.held is None:
            self.held.discard(key)
        elif key not in self.held:
            self._hold(key, state)
        self._settle(key, state)
        return notification

    def _hold(self, key: tuple[str, str], state: AlertState) -> None:
        self.held.add(key)
        rule = self.rules.rules.get(key[0])
        if rule is not None:  # an alert of a rule no longer configured is never due
            ends = 0 if state.notified_at is None else state.notified_at + rule.throttle_us
            heapq.heappush(self.held_until, (ends, key))

    def _settle(self, key: tuple[str, str], state: AlertState) -> None:
        """Note when a resolved alert with nothing held back may be forgotten."""
        if state.current == "resolved" and state.held is None:
            rule = self.rules.rules.get(key[0])
            throttle = 0 if rule is None else rule.throttle_us
            ends = 0 if state.notified_at is None else state.notified_at + throttle
            heapq.heappush(self.expiring, (ends, key))

    def expire(self, now: int) -> None:
        """Forget resolved alerts whose throttle window is over by `now` (`take_expired`
        lists them, so their stored state can be deleted)."""
        expiring = self.expiring
        while expiring and expiring[0][0] <= now:
            _, key = heapq.heappop(expiring)
            state = self.states.get(key)
            rule = self.rules.rules.get(key[0])
            if (
                state is not None
                and rule is not None
                and state.current == "resolved"
                and state.held is None
                and _window_over(rule, state, now)
            ):
                del self.states[key]
                self.dirty.discard(key)
                self.held.discard(key)
                self.expired.append(key)

    def take_expired(self) -> list[tuple[str, str]]:
        """(rule, group) of every alert forgotten since the last call, for deleting."""
        out = [key for key in self.expired if key not in self.states]  # not re-created since
        self.expired = []
        return out

    def _fire(self, rule: Rule, state: AlertState, trigger: Trigger) -> Notification | None:
        if state.current != "firing":
            state.current, state.starts_at, state.ends_at = "firing", trigger.time, None
        if _window_over(rule, state, trigger.time):
            return self._notify(rule, state, trigger)
        state.suppressed += 1
        state.held = trigger if state.notified != "firing" else None
        return None

    def _resolve(self, rule: Rule, state: AlertState, trigger: Trigger) -> Notification | None:
        if state.current != "firing":
            return None
        state.current, state.ends_at = "resolved", trigger.time
        if state.notified != "firing":
            state.held = None  # it came and went inside the window: nothing to announce
            return None
        if not rule.send_resolved:
            return None
        if _window_over(rule, state, trigger.time):
            return self._notify(rule, state, trigger)
        state.held = trigger
        return None

    def due(self, now: int) -> list[Notification]:
        """Held-back changes whose throttle window is over by `now`, oldest first."""
        ready = set()
        until = self.held_until
        while until and until[0][0] <= now:
            _, key = heapq.heappop(until)
            if key in self.held:
                ready.add(key)
        out = []
        for key in sorted(ready, key=lambda k: (self.states[k].notified_at or 0, k)):
            state = self.states[key]
            rule = self.rules.rules.get(key[0])
            if rule is None or state.held is None or not _window_over(rule, state, now):
                if state.held is not None:  # a stale entry: the window ends later
                    self.held.discard(key)
                    self._hold(key, state)
                continue
            self.dirty.add(key)
            self.held.discard(key)
            out.append(self._notify(rule, state, state.held))
            self._settle(key, state)
        return out

    def has_due(self, now: int) -> bool:
        """Some held-back change can be sent by `now`. Stale window ends on top of the heap
        (of an alert no longer held, or sent since: its window ends later) are dropped."""
        until = self.held_until
        while until and not self._current(*until[0]):
            heapq.heappop(until)
        return bool(until) and until[0][0] <= now

    def _current(self, ends: int, key: tuple[str, str]) -> bool:
        """`ends` is when the window of `key`, held back, is over now."""
        state, rule = self.states.get(key), self.rules.rules.get(key[0])
        if key not in self.held or state is None or rule is None:
            return False
        return ends == (0 if state.notified_at is None else state.notified_at + rule.throttle_us)

    def _notify(self, rule: Rule, state: AlertState, trigger: Trigger) -> Notification:
        announced: Literal["firing", "resolved"] = (
            "firing" if state.current == "firing" else "resolved"
        )
        text = f"{rule.name}\x1f{trigger.group_key}\x1f{announced}\x1f{trigger.event_id}"
        if announced == "firing" or state.severity is None:
            state.severity = rule.severity_of(trigger.fields)
        severity = state.severity
        labels = {"alertname": rule.name, "severity": severity}
        labels.update(
            (k, str(trigger.fields.get(k)))
            for k in rule.group_by
            if trigger.fields.get(k) is not None
        )
        if trigger.fields.get("run_id") is not None:
            labels.setdefault("run_id", str(trigger.fields["run_id"]))
        notification = Notification(
            id=hashlib.blake2b(text.encode(), digest_size=16).hexdigest(),
            rule=rule.name,
            group_key=trigger.group_key,
            state=announced,
            severity=severity,
            channels=rule.channels,
            event_id=trigger.event_id,
            event_time=trigger.time,
            starts_at=state.starts_at,
            ends_at=state.ends_at if announced == "resolved" else None,
            suppressed=state.suppressed,
            labels=labels,
            summary=render(rule.summary, trigger.fields)
            + ("" if announced == "firing" else " (resolved)"),
            event=trigger.fields,
            runbook_url=rule.runbook_url,
        )
        state.notified, state.notified_at = announced, trigger.time
        state.suppressed, state.held = 0, None
        return notification

    def take_dirty(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(rule, group, state) of every alert changed since the last call, for storing."""
        out = [
            (rule, group, self.states[(rule, group)].to_dict())
            for rule, group in sorted(self.dirty)
        ]
        self.dirty.clear()
        return out


def _window_over(rule: Rule, state: AlertState, now: int) -> bool:
    return state.notified_at is None or now - state.notified_at >= rule.throttle_us


class _Missing(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


def render(template: str, fields: Mapping[str, Any]) -> str:
    """A rule's summary with `{field}`s filled in; an unknown field shows as `?`."""
    try:
        return template.format_map(
            _Missing({k: "-" if v is None else v for k, v in fields.items()})
        )
    except (ValueError, IndexError, AttributeError):
        return template
