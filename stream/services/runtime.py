"""One service runtime: the processor, its alert decisions, the dispatcher that carries out
the outbox and the audit trail, wired one way for every service that folds events (`tail`,
a partition processor, `replay`) and for delivering the outbox after `replay --deliver`.

Delivery contract: decisions are made by the processor's commit, in the transaction that
writes the rows causing them (see `Processor.commit`); what the dispatcher records about a
delivery or a job is evaluated by the rules at the next commit after `recorded` is set.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from runwatch.projections import DerivedEvent
from runwatch.projections.slo import Slo, SloBook, horizon_s
from runwatch.sinks.audit import HEAD_KEY, AuditLog
from runwatch.sinks.store import Store
from runwatch.sinks.store.slo_reads import announced_levels, finished_runs, finished_runs_of
from runwatch.sinks.store.spill import HeldOnDisk, TasksOnDisk
from runwatch.sinks.store.sqlite import SqliteStore
from runwatch.sinks.traces import OtlpTarget
from runwatch.stream.console import wall_clock
from runwatch.stream.core.decisions import Decisions, Policy
from runwatch.stream.core.groups import Observe
from runwatch.stream.core.processor import Processor
from runwatch.stream.core.retire import Retirement
from runwatch.stream.delivery import jobs
from runwatch.stream.delivery.dispatcher import Dispatcher
from runwatch.stream.delivery.handlers import build_handlers
from runwatch.stream.settings.alerts import AlertSetup
from runwatch.stream.settings.service import Settings
from runwatch.stream.settings.traces import otlp_target
from runwatch.stream.sources.follow import Follower

TRAIL = "monitor.jsonl"
"""The audit trail's file in `logs_dir` (a partition processor keeps its own)."""

Recorded = list[tuple[int, dict[str, Any]]]
"""(seq, derived event) rows that deliveries and jobs recorded outside the fold."""


def now_us() -> int:
    """The wall clock in UTC microseconds: the `now` of live decisions and lifecycle events."""
    return time.time_ns() // 1000


def lifecycle(kind: str, data: dict[str, Any]) -> DerivedEvent:
    """A service's own event (MONITOR_STARTED, HEARTBEAT, …), stamped now."""
    return DerivedEvent(kind, now_us(), None, data)


def alert_horizon(store: Store, lookback_s: float) -> int:
    """The alert horizon: fixed when a database is first served, so a restart still alerts
    on what happened while the service was down, but a new service does not alert on
    history older than `alert_lookback`."""
    since = store.meta().get("alerts_since")
    if since is None:
        since = str(now_us() - int(lookback_s * 1_000_000))
        store.set_meta([("alerts_since", since)])
    return int(since)


@dataclass
class Runtime:
    """What a service is made of around its source of lines: build it with `live`,
    `replay` or `outbox`; `dispatcher()` and `audit()` make the parts a service runs."""

    store: Store
    settings: Settings
    alerts: AlertSetup
    processor: Processor
    target: Path | str
    """The database the dispatcher's threads connect to."""
    traces: OtlpTarget | None = None
    """Where run traces are exported; None: traces are off."""
    recorded: threading.Event = field(default_factory=threading.Event)
    """Set when a delivery or a job recorded something the rules have not evaluated."""

    @classmethod
    def live(
        cls,
        store: Store,
        settings: Settings,
        alerts: AlertSetup,
        *,
        target: Path | str | None = None,
    ) -> Runtime:
        """A service that delivers what it decides, from the alert horizon on. `target` is
        the database `store` opened when it is not `settings.database` (a PostgreSQL URL)."""
        traces = otlp_target(settings)
        policy = alerts.policy(deliver=True, since_us=alert_horizon(store, alerts.lookback_s))
        decisions = Decisions(
            alerts.rules, store, with_trace_jobs(policy, traces), settle_s=settings.settle
        )
        return cls._build(store, settings, alerts, decisions, traces, target=target)

    @classmethod
    def replay(
        cls,
        store: Store,
        settings: Settings,
        alerts: AlertSetup,
        *,
        deliver: bool,
        observe: Observe | None = None,
    ) -> Runtime:
        """A rebuild into a fresh `store`: every decision is held until the input is folded,
        then made in event-time order; left to deliver only with `deliver`."""
        traces = otlp_target(settings)
        decisions = Decisions(
            alerts.rules,
            None,
            with_trace_jobs(alerts.policy(deliver=deliver), traces),
            holding=HeldOnDisk(),
            settle_s=settings.settle,
        )
        return cls._build(
            store,
            settings,
            alerts,
            decisions,
            traces,
            known_groups=True,
            observe=observe,
            replay=True,
        )

    @classmethod
    def outbox(cls, store: Store, settings: Settings, alerts: AlertSetup) -> Runtime:
        """Delivering an outbox a replay left: everything in it, whatever its age."""
        traces = otlp_target(settings)
        policy = with_trace_jobs(alerts.policy(deliver=True), traces)
        decisions = Decisions(alerts.rules, store, policy, settle_s=settings.settle)
        return cls._build(store, settings, alerts, decisions, traces)

    @classmethod
    def _build(
        cls,
        store: Store,
        settings: Settings,
        alerts: AlertSetup,
        decisions: Decisions,
        traces: OtlpTarget | None,
        *,
        target: Path | str | None = None,
        known_groups: bool = False,
        observe: Observe | None = None,
        replay: bool = False,
    ) -> Runtime:
        processor = Processor(
            store,
            stall_after_s=settings.stall_after,
            forget_after_s=settings.forget_after,
            max_line_bytes=settings.max_line_bytes,
            wall_clock=wall_clock,
            max_groups=settings.cache_groups,
            max_groups_ceiling=settings.cache_groups_max,
            known_groups=set() if known_groups else None,
            rules=alerts.rules,
            decisions=decisions,
            observe=observe,
            latest_time=wall_clock_bound(settings.max_future_skew, fixed=replay),
            retirement=Retirement(TasksOnDisk),
        )
        return cls(store, settings, alerts, processor, target or settings.database, traces)

    def dispatcher(
        self,
        *,
        out: TextIO | None = None,
        lock: threading.Lock | None = None,
        fetch: jobs.Fetch | None = None,
        on_record: Callable[[], None] | None = None,
        on_failure: Callable[[dict[str, Any], str], None] | None = None,
    ) -> Dispatcher:
        """An unstarted dispatcher for this database's outbox, its channels writing to `out`
        under `lock`; `fetch` reads a run's lines for the jobs when the files are elsewhere.
        A recorded outcome sets `recorded`, then calls `on_record` (from its thread)."""

        def recorded() -> None:
            self.recorded.set()
            if on_record is not None:
                on_record()

        return Dispatcher(
            self.target,
            build_handlers(
                self.alerts, self.settings, out=out, lock=lock, fetch=fetch, traces=self.traces
            ),
            self.alerts.delivery,
            on_record=recorded,
            on_failure=on_failure or _unreported,
        )

    def audit(self, name: str = TRAIL, *, head_key: str = HEAD_KEY) -> AuditLog:
        """The audit trail `name` in `logs_dir`, anchored in the database under `head_key`."""
        return AuditLog(self.settings.logs_dir / name, self.store, head_key=head_key)

    def take_recorded(self, owned: Callable[[dict[str, Any]], bool] | None = None) -> Recorded:
        """What deliveries and jobs recorded since `recorded` was set (those `owned` by this
        service), for the next commit to evaluate; nothing when it was not set."""
        if not self.recorded.is_set():
            return []
        self.recorded.clear()
        rows = self.store.unevaluated()
        return rows if owned is None else [(seq, data) for seq, data in rows if owned(data)]


class LiveSlos:
    """A live service's SLOs: the finished runs their windows reach, kept up to date from
    what each commit made durable, judged on the wall clock at every tick. The level each
    SLO announced is read back from its last SLO_BURN / SLO_RECOVERED, so a restart neither
    repeats nor loses an announcement (one not yet committed is made again)."""

    CHANGES = frozenset({"RUN_COMPLETED", "RUN_STATUS_CHANGED", "RUN_UPDATED"})

    def __init__(self, store: Store, slos: list[Slo]) -> None:
        self.store = store
        since = now_us() - round(horizon_s(slos) * 1_000_000)
        self.book = SloBook(slos, finished_runs(store.db, since), announced_levels(store.db))
        self.figures: list[dict[str, Any]] = []

    def committed(self, derived: list[DerivedEvent]) -> None:
        """Runs that ended or changed in a commit: read back as the commit wrote them."""
        changed = sorted({d.run_id for d in derived if d.type in self.CHANGES and d.run_id})
        if changed:
            self.book.note(changed, finished_runs_of(self.store.db, changed))

    def tick(self, now: int) -> list[DerivedEvent]:
        """The SLO events due at `now`; `figures` holds every SLO's figures at `now`."""
        events, self.figures = self.book.tick(now)
        return events


def with_trace_jobs(policy: Policy, traces: OtlpTarget | None) -> Policy:
    """The policy deciding trace jobs too when traces are on."""
    return policy if traces is None else replace(policy, jobs=policy.jobs | {"trace"})


def _unreported(_payload: dict[str, Any], _detail: str) -> None:
    """A failed delivery is recorded (ALERT_FAILED) and audited; nothing more to say."""


def wall_clock_bound(skew_s: float, *, fixed: bool = False) -> Callable[[], int]:
    """`Processor(latest_time=...)`: the wall clock plus `skew_s` in UTC µs, read at each
    call, or once now when `fixed` (a replay judges every line against its start)."""
    skew_us = int(skew_s * 1_000_000)
    if fixed:
        latest = time.time_ns() // 1000 + skew_us
        return lambda: latest
    return lambda: time.time_ns() // 1000 + skew_us


def follow(
    patterns: list[str], store: SqliteStore, settings: Settings, notes: list[DerivedEvent]
) -> Follower:
    """A follower of `patterns` as the settings say, resumed from `store`'s checkpoints; its
    notes (rotations, unreadable files) go to `notes`."""
    return Follower(
        patterns,
        store,
        max_line_bytes=settings.max_line_bytes,
        rotate_wait_s=settings.rotate_wait,
        notes=notes,
    )
