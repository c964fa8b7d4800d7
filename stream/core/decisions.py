"""Decisions at commit time: triggers and derived events → alert book → outbox entries.

Delivery contract: every decision is written by the same transaction as the rows, the
checkpoints and the alert book state that caused it (see `Processor.commit`), so a crash
never loses a decision and never makes one twice. Delivering is someone else's job (the
dispatcher); here only the `state` of an entry is chosen: `pending` (to deliver), `recorded`
(replay without --deliver) or `skipped` (older than `alert_lookback`).
"""

from __future__ import annotations

import hashlib
import pickle
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from runwatch.projections import DerivedEvent
from runwatch.projections.alerts import AlertBook, AlertState, Notification, RuleSet, Trigger
from runwatch.projections.events import format_time
from runwatch.projections.storm import StormGate, StormWindow
from runwatch.sinks.store.api import Changes, Holding, OutboxEntry, Store
from runwatch.stream.core.blobs import dumps_exact
from runwatch.stream.core.decode import parse_time

JOB_TRIGGERS = {
    "RUN_COMPLETED": ("report", "archive", "trace"),
    "RUN_STATUS_CHANGED": ("report", "archive"),
    "RUN_UPDATED": ("report", "archive"),
}
"""Which derived events start which completion jobs. After a run's first completion the
archive job only records the events its archive lacks: an archive is never rewritten. A
run's trace is exported once, at its completion (`runwatch traces export` re-sends it)."""


@dataclass(frozen=True, slots=True)
class Policy:
    """What to do with new decisions: deliver them (live), or only record them (replay).
    Alerts about events older than `since_us` are recorded as `skipped`; beyond
    `max_per_minute` notifications of one rule in a minute of event time, the rest are
    grouped into one."""

    deliver: bool
    since_us: int | None = None
    channels: frozenset[str] | None = None
    jobs: frozenset[str] = frozenset({"report", "archive"})
    """The completion jobs decided; `trace` joins them when traces are on."""
    max_per_minute: int = 30


RELEASE_BATCH = 1_000
"""Held triggers decided, and outbox entries written, at a time when a replay releases."""

STORM_KEY = "\x1fstorm:"
"""The group key prefix under which a rule's per-minute storm counts share `alert_state`."""


class Decisions:
    """The alert book of one database, and the outbox entries its decisions make."""

    def __init__(
        self,
        rules: RuleSet,
        store: Store | None,
        policy: Policy,
        *,
        holding: Holding | None = None,
        settle_s: float = 0.0,
    ) -> None:
        """With `holding`, every trigger is kept there until `release`: a replay decides
        once, over all triggers in event-time order, so its decisions do not depend on file
        order, and what it holds stays out of memory. An implicit completion's jobs wait
        `settle_s` for the run's explicit terminal event: from the completion's event time
        in a replay (`holding`), from `now` when live."""
        self.rules = rules
        self.policy = policy
        self.settle_us = int(settle_s * 1_000_000)
        self.settle_in_event_time = holding is not None
        self.settling: OrderedDict[str, int] = OrderedDict()
        """Run → when its completion jobs fall due, for the runs still settling (as far as
        this process knows: after a restart, an explicit end counts as a late event)."""
        saved: dict[tuple[str, str], AlertState] = {}
        windows: dict[tuple[str, int], StormWindow] = {}
        for rule, group, state in () if store is None else store.alert_states():
            if rule not in rules.rules:
                continue
            if group.startswith(STORM_KEY):
                windows[(rule, int(group[len(STORM_KEY) :]))] = StormWindow.from_dict(state)
            else:
                saved[(rule, group)] = AlertState.from_dict(state)
        self.book = AlertBook(rules, saved)
        self.gate = StormGate(policy.max_per_minute, windows)
        self.holding = holding

    def decide(
        self,
        triggers: list[Trigger],
        derived: list[DerivedEvent],
        now: int,
        changes: Changes,
        recorded: Iterable[tuple[int, dict[str, Any]]] = (),
    ) -> None:
        """Offer this commit's triggers (input events and derived ones) in event-time order;
        put the notifications and jobs that result, and the changed alert states, in
        `changes`. Derived events come first at equal times: they carry the counts.
        `recorded` are (seq, event) rows that deliveries and jobs recorded outside the fold:
        decided here too, and marked evaluated by the same commit."""
        for seq, data in recorded:
            rest = {k: v for k, v in data.items() if k not in ("type", "event_time", "run_id")}
            derived = [
                *derived,
                DerivedEvent(
                    data["type"], parse_time(data["event_time"]), data.get("run_id"), rest
                ),
            ]
            changes.evaluated.append(seq)
        ordered = [(d.time, 0, "", t) for d in derived for t in self.rules.match_derived(d)]
        ordered.extend((t.time, 1, t.event_id, t) for t in triggers)
        if self.holding is not None:
            self.holding.hold(
                [
                    (time, tier, order, t.rule, t.role, t.event_id, _pack(t))
                    for time, tier, order, t in ordered
                ],
                [(event.time, _pack(event)) for event in derived],
            )
            return
        ordered.sort(key=lambda item: item[:3])
        self._offer((trigger for *_, trigger in ordered), changes.outbox)
        self._settle(now, changes, changes.outbox)
        self._decide_jobs(derived, now, changes.outbox, changes.hastened)

    def release(
        self, now: int, changes: Changes, write: Callable[[list[OutboxEntry]], None]
    ) -> None:
        """Decide everything held back (the end of a replay) in event-time order; the
        outbox entries go to `write` a batch at a time, in the order they are decided, so
        memory stays bounded however much was held. The alert book's state goes in
        `changes`."""
        holding, self.holding = self.holding, None
        if holding is None:
            return
        outbox: list[OutboxEntry] = []
        for batch in holding.triggers(RELEASE_BATCH):
            self._offer((_unpack(body) for body in batch), outbox)
            if len(outbox) >= RELEASE_BATCH:
                write(outbox)
                outbox = []
        self._settle(now, changes, outbox)
        for batch in holding.derived(RELEASE_BATCH):
            events = [_unpack(body) for body in batch]
            self._decide_jobs(events, now, outbox, changes.hastened)
            if len(outbox) >= RELEASE_BATCH:
                write(outbox)
                outbox = []
        if outbox:
            write(outbox)
        holding.close()

    def _offer(self, triggers: Iterable[Trigger], outbox: list[OutboxEntry]) -> None:
        """Offer triggers, in event-time order, to the storm gate and the alert book."""
        book, gate = self.book, self.gate
        for trigger in triggers:
            # Time moves on in event order: what is over by this trigger is settled first.
            book.expire(trigger.time)
            for digest in gate.due(trigger.time):
                outbox.extend(self._entries(digest))
            notification = book.offer(trigger)
            if notification is not None and gate.admit(notification):
                outbox.extend(self._entries(notification))

    def _settle(self, now: int, changes: Changes, outbox: list[OutboxEntry]) -> None:
        """End the windows over by `now`; the book's changed state goes in `changes`."""
        book, gate = self.book, self.gate
        for notification in book.due(now):
            if gate.admit(notification):
                outbox.extend(self._entries(notification))
        for digest in gate.due(now):
            outbox.extend(self._entries(digest))
        book.expire(now)
        for rule, group, state in book.take_dirty():
            changes.alert_states.append((rule, group, dumps_exact(state)))
        changes.alert_states_deleted.extend(book.take_expired())
        windows, dropped = gate.take_changes()
        changes.alert_states.extend(
            (rule, f"{STORM_KEY}{start}", dumps_exact(window.to_dict()))
            for (rule, start), window in windows
        )
        changes.alert_states_deleted.extend(
            (rule, f"{STORM_KEY}{start}") for rule, start in dropped
        )

    def has_due(self, now: int) -> bool:
        """A held-back notification's window is over: a commit should happen now."""
        return self.book.has_due(now) or self.gate.has_due(now)

    def _state(self, event_time: int) -> str:
        if not self.policy.deliver:
            return "recorded"
        if self.policy.since_us is not None and event_time < self.policy.since_us:
            return "skipped"
        return "pending"

    def _entries(self, notification: Notification) -> list[OutboxEntry]:
        payload = notification.to_dict()
        state = self._state(notification.event_time)
        out = []
        for channel in notification.channels:
            if self.policy.channels is not None and channel not in self.policy.channels:
                continue  # named by the rule, but not configured here (e.g. no SLACK_WEBHOOK_URL)
            delivery_id = _digest(notification.id, channel)
            out.append(
                OutboxEntry(
                    delivery_id,
                    "alert",
                    channel,
                    state,
                    {**payload, "id": delivery_id},
                    run_id=payload["run_id"],
                    alert_id=notification.id,
                    rule=notification.rule,
                    event_time=payload["event_time"],
                )
            )
        return out

    def _decide_jobs(
        self,
        derived: list[DerivedEvent],
        now: int,
        outbox: list[OutboxEntry],
        hastened: list[tuple[str, float]],
    ) -> None:
        """Completion jobs, in event-time order. An implicit completion's jobs are written
        at once (so a crash cannot lose them and the outbox shows them) but due only when
        `settle` is over; the run's explicit end makes them due as soon as it arrives."""
        for event in sorted(derived, key=attrgetter("time")):
            if event.type in JOB_TRIGGERS and event.run_id is not None:
                self._job_trigger(event, event.run_id, now, outbox, hastened)

    def _job_trigger(
        self,
        event: DerivedEvent,
        run_id: str,
        now: int,
        outbox: list[OutboxEntry],
        hastened: list[tuple[str, float]],
    ) -> None:
        status = event.data.get("status")
        explicit = event.data.get("explicit", True)
        clock = event.time if self.settle_in_event_time else now
        settling = self.settling
        while settling and next(iter(settling.values())) <= clock:
            settling.popitem(last=False)  # settled: later events are late events
        if run_id in settling:
            if explicit:
                del settling[run_id]
                hastened.append((run_id, clock / 1e6))
            return  # the waiting jobs will read the run as it is when they start
        not_before = 0.0
        if event.type == "RUN_COMPLETED" and not explicit and self.settle_us > 0:
            learnt = event.time if self.settle_in_event_time else now
            due = settling[run_id] = learnt + self.settle_us
            not_before = due / 1e6
        extra = (str(event.data.get("events_total")),) if event.type == "RUN_UPDATED" else ()
        outbox.extend(self._jobs(run_id, event.type, event.time, status, extra, not_before))

    def _jobs(
        self,
        run_id: str,
        trigger: str,
        time: int,
        status: Any,
        extra: tuple[str, ...],
        not_before: float,
    ) -> list[OutboxEntry]:
        """The jobs `trigger` starts, due at `not_before` (Unix time); their ids are a hash
        of what started them, so the same completion always gives the same ids (`extra`
        tells apart repeats of a trigger)."""
        when = format_time(time) or ""
        payload = {
            "run_id": run_id,
            "trigger": trigger,
            "event_time": when,
            "status": status,
        }
        state = self._state(time)
        return [
            OutboxEntry(
                _digest(kind, run_id, trigger, when, str(status), *extra),
                "job",
                kind,
                state,
                {**payload, "job": kind},
                run_id=run_id,
                event_time=when,
                not_before=not_before,
            )
            for kind in JOB_TRIGGERS[trigger]
            if kind in self.policy.jobs
        ]


def _pack(value: Trigger | DerivedEvent) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _unpack(body: bytes) -> Any:
    """A trigger or derived event this process held (never bytes from elsewhere)."""
    return pickle.loads(body)


def _digest(*parts: str) -> str:
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()
