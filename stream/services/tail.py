"""`runwatch tail`: the service that follows event files and keeps the projection current.

One loop in one thread owns the database. Watchdog's observer thread only records which
paths changed and wakes the loop; a periodic re-scan catches what notifications miss. Each
pass reads what was appended (at most `batch_max_bytes`), folds it, and commits the rows
together with the checkpoints that cover them, so `kill -9` at any instant loses nothing
and applies nothing twice. The files themselves are the buffer: memory stays bounded
however far behind the service is.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, TextIO

from runwatch.projections import DerivedEvent
from runwatch.sinks.audit import AuditLog
from runwatch.sinks.metrics import Metrics
from runwatch.sinks.store import outbox
from runwatch.sinks.store.api import Checkpoint
from runwatch.sinks.store.slo_reads import latest_success
from runwatch.sinks.store.sqlite import SqliteStore
from runwatch.stream.console import ServiceConsole, wall_clock
from runwatch.stream.core import collector
from runwatch.stream.core.processor import Processor
from runwatch.stream.delivery.dispatcher import Dispatcher
from runwatch.stream.errors import ServiceError
from runwatch.stream.services.health import report, run_checks, status_path, write_status
from runwatch.stream.services.lock import DatabaseLock
from runwatch.stream.services.parallel import Backlog, Flight, Reached, split_lines
from runwatch.stream.services.runtime import LiveSlos, Runtime, follow, lifecycle, now_us
from runwatch.stream.settings.alerts import AlertSetup, default_alert_setup
from runwatch.stream.settings.service import Settings, Source, parse_address
from runwatch.stream.sources.discovery import static_prefix
from runwatch.stream.sources.follow import FileId, Follower
from runwatch.stream.sources.watch import FileChanges, Passes, watch_files

if TYPE_CHECKING:  # the web server and its framework load only with `metrics_addr`
    from runwatch.stream.web.server import WebServer

SLICE_BYTES: Final = 256 << 10
"""A read is folded this much at a time, so that a read of many new runs can be written
out before all of it is folded (see `Processor.crowded`)."""
DETECT_BEHIND_S: Final = 60.0
"""While a backlog is being read, stalls are judged at most this often: a run's silence
may be lines not read yet. Judged every tick, the runs of an old backlog would be abandoned
and brought back again and again (each time written out and read back)."""


@dataclass
class Intervals:
    """Seconds between the loop's periodic duties."""

    rescan: float
    tick: float
    heartbeat: float


class TailService:
    """Follow `patterns`, fold, commit, audit; until `stop()` or SIGTERM/SIGINT."""

    def __init__(
        self,
        patterns: list[str],
        settings: Settings,
        *,
        poll: bool = False,
        out: TextIO | None = None,
        quiet: bool = False,
        alerts: AlertSetup | None = None,
    ) -> None:
        self.patterns = patterns
        self.settings = settings
        self.alerts = alerts or default_alert_setup()
        self.console = ServiceConsole(out, quiet=quiet)
        self.poll = poll
        self.intervals = Intervals(
            settings.rescan_interval, settings.tick_interval, settings.heartbeat_interval
        )
        self.wake = threading.Event()
        self.dispatcher: Dispatcher | None = None
        self.web: WebServer | None = None
        self.metrics = Metrics(s.threshold_s for s in settings.objectives if s.threshold_s)
        self.slos: LiveSlos | None = None
        self.ingest = IngestCounts(settings.sources)
        self.last_loop = time.monotonic()
        self.lag_s = 0.0
        self.lag_bytes = 0
        self.due_lag = 0.0
        self.stopping = False
        self.started = time.monotonic()
        self.started_at = wall_clock()

    def stop(self, *_: Any) -> None:
        self.stopping = True
        self.wake.set()

    def run(self) -> int:
        """Serve until stopped; returns the exit code. A stop requested while starting up is
        honoured as soon as the service is consistent (it still writes MONITOR_STOPPED)."""
        previous = self._install_signals()
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(_restore_signals, previous)
            cleanup.enter_context(collector.paused())
            lock = DatabaseLock(self.settings.database)
            lock.acquire()
            cleanup.callback(lock.release)
            store = SqliteStore(self.settings.database)
            cleanup.callback(store.close)
            notes: list[DerivedEvent] = []
            runtime = Runtime.live(store, self.settings, self.alerts)
            if self.settings.objectives:
                self.slos = LiveSlos(store, self.settings.objectives)
            self.metrics.succeeded_at(latest_success(store.db))
            processor = runtime.processor
            dispatcher = runtime.dispatcher(
                out=self.console.out,
                lock=self.console.lock,
                on_record=self.wake.set,
                on_failure=self._failed,
            )
            follower = follow(self.patterns, store, self.settings, notes)
            cleanup.callback(follower.close)
            audit = runtime.audit()
            handler = FileChanges(self.wake.set)
            passes = Passes(follower, handler, self.intervals.rescan)
            observer = watch_files(self.patterns, handler, poll=self.poll)
            processor.note(
                lifecycle(
                    "MONITOR_STARTED",
                    {
                        "pid": os.getpid(),
                        "database": str(self.settings.database),
                        "patterns": self.patterns,
                    },
                )
            )
            passes.discover()
            self._commit(runtime, follower, notes, audit)
            dispatcher.start()
            cleanup.callback(dispatcher.stop)
            self.dispatcher = dispatcher
            self._serve_metrics(cleanup)
            self._publish(processor, follower)
            cleanup.callback(status_path(self.settings.database).unlink, missing_ok=True)
            observer.start()
            cleanup.callback(observer.join, 0.2)  # daemon threads; everything is committed
            cleanup.callback(observer.stop)
            self._loop(runtime, passes, notes, audit)
            dispatcher.stop()
            runtime.recorded.set()  # what the deliveries recorded last is evaluated and audited
            processor.note(
                lifecycle(
                    "MONITOR_STOPPED", {"uptime_s": round(time.monotonic() - self.started, 3)}
                )
            )
            self._commit(runtime, follower, notes, audit)
        return 0

    def _loop(
        self,
        runtime: Runtime,
        passes: Passes,
        notes: list[DerivedEvent],
        audit: AuditLog,
    ) -> None:
        processor, follower = runtime.processor, passes.follower
        now = time.monotonic()
        due_tick = now + self.intervals.tick
        due_heartbeat = now + self.intervals.heartbeat
        due_detect = now + DETECT_BEHIND_S
        budget = self.settings.batch_max_bytes
        backlog = Backlog(
            _backlog_workers(), budget, self.settings.max_line_bytes, self.alerts.rules
        )
        flight: Flight | None = None  # a backlog read the workers are folding
        taken: tuple[list[Checkpoint], list[FileId]] | None = None  # where a landed one ends

        def unload(reached: list[Reached]) -> None:
            """Many new runs in one read: commit them, with checkpoints where the lines
            folded so far end, before memory fills (not possible once a file is closed)."""
            if not processor.crowded:
                return
            checkpoints = [r.owner.checkpoint_at(r.offset, r.line) for r in reached]
            if None not in checkpoints:
                landed = [] if taken is None else taken[0]
                at = [*landed, *(c for c in checkpoints if c is not None)]
                self._commit(runtime, follower, notes, audit, (at, []), more=True)

        behind = True  # unread bytes may be in any file (at the start: everything is unread)
        try:
            while not self.stopping:
                if not behind and self.settings.linger > 0:
                    time.sleep(self.settings.linger)  # let a trickle of lines share one commit
                self.wake.clear()
                reads = passes.read(backlog.budget if behind else budget, everything=behind)
                now = time.monotonic()
                landing, flight = flight, None
                if backlog.wanted(sum(r.lines.end - r.lines.offset for r in reads)):
                    flight = backlog.submit(
                        [(r.cursor, r.cursor.source, r.cursor.source_id, r.lines) for r in reads],
                        processor.latest_us,
                        follower.checkpoints(),
                    )
                    reads = []
                taken = None
                if landing is not None:
                    for source, fresh in backlog.land(landing, processor, unload).items():
                        self.ingest.add(source, fresh)
                    taken = landing.checkpoints
                done: list[Reached] = []
                for read in reads:
                    cursor = read.cursor
                    for part in split_lines(read.lines, SLICE_BYTES):
                        fresh = processor.process(cursor.source, cursor.source_id, part)
                        self.ingest.add(cursor.source, fresh)
                        unload([*done, Reached(cursor, part.end, part.line + len(part.items))])
                    lines = read.lines
                    done.append(Reached(cursor, lines.end, lines.line + len(lines.items)))
                if now >= due_tick:
                    if not behind or now >= due_detect:
                        processor.detect(now_us())
                        due_detect = now + DETECT_BEHIND_S
                    if self.slos is not None:
                        processor.note(*self.slos.tick(now_us()))
                        self.metrics.set_slos(self.slos.figures)
                    self._publish(processor, follower)
                    due_tick = now + self.intervals.tick
                if now >= due_heartbeat:
                    accepted = follower.store.counters().get("events_accepted", 0)
                    processor.note(
                        lifecycle(
                            "HEARTBEAT",
                            {
                                "events_accepted": accepted + processor.pending.accepted,
                                "open_runs": len(processor.open_runs),
                                "files": len(follower.cursors),
                            },
                        )
                    )
                    due_heartbeat = now + self.intervals.heartbeat
                if not self._commit(
                    runtime, follower, notes, audit, taken, more=flight is not None
                ):
                    collector.collect()  # idle too: the dispatcher and web threads make garbage
                self.last_loop = time.monotonic()
                behind = follower.behind or flight is not None
                if behind:
                    continue  # more is waiting: keep reading without sleeping
                timeout = max(
                    0.0, min(passes.due_rescan, due_tick, due_heartbeat) - time.monotonic()
                )
                self.wake.wait(timeout)
            if flight is not None:
                taken = None
                for source, fresh in backlog.land(flight, processor, unload).items():
                    self.ingest.add(source, fresh)
                self._commit(runtime, follower, notes, audit, flight.checkpoints)
        finally:
            backlog.close()

    def _commit(
        self,
        runtime: Runtime,
        follower: Follower,
        notes: list[DerivedEvent],
        audit: AuditLog,
        taken: tuple[list[Checkpoint], list[FileId]] | None = None,
        *,
        more: bool = False,
    ) -> bool:
        """Commit what was folded with the checkpoints it reaches: those `taken` when a
        backlog read was, then those of what was read since, unless that read is still
        being folded (`more`). Whether it committed (a commit collects young garbage)."""
        processor = runtime.processor
        checkpoints, forgotten = taken or ([], [])
        if not more:
            later, gone = follower.checkpoints()
            checkpoints, forgotten = [*checkpoints, *later], [*forgotten, *gone]
        if notes:
            processor.note(*notes)
            notes.clear()
        now = now_us()
        if not (checkpoints or forgotten or runtime.recorded.is_set() or processor.has_work(now)):
            return False
        evaluated = runtime.take_recorded()
        processor.forget_files(forgotten)
        derived = processor.commit(checkpoints, now=now, evaluated=evaluated)
        if self.slos is not None:
            self.slos.committed(derived)
        self.ingest.committed(self.metrics)
        if processor.outboxed and self.dispatcher is not None:
            self.dispatcher.poke()
        if self.web is not None:
            self.web.nudge()
        records = audit.drain()
        self.metrics.record(records)
        self.console.records(records)
        return True

    def _publish(self, processor: Processor, follower: Follower) -> None:
        """Gauges and the status file: what the service is doing now, for scrapers, health
        checks and `status --watch`."""
        if time.monotonic() >= self.due_lag:  # a stat of every file: not on every tick
            self.lag_bytes, self.lag_s = follower.lag(time.time())
            self.due_lag = time.monotonic() + self.intervals.rescan
        lag_bytes = self.lag_bytes
        stalled = sum(1 for _, flagged in processor.open_runs.values() if flagged)
        pending = outbox.pending_count(follower.store.db)
        metrics = self.metrics
        metrics.lag_seconds.set(self.lag_s)
        metrics.lag_bytes.set(lag_bytes)
        metrics.active_runs.set(len(processor.open_runs))
        metrics.stalled_runs.set(stalled)
        metrics.outbox_pending.set(pending)
        write_status(
            status_path(self.settings.database),
            {
                "pid": os.getpid(),
                "started_at": self.started_at,
                "updated_at": wall_clock(),
                "updated_unix": time.time(),
                "ingest_lag_seconds": round(self.lag_s, 3),
                "ingest_lag_bytes": lag_bytes,
                "files": len(follower.cursors),
                "open_runs": len(processor.open_runs),
                "stalled_runs": stalled,
                "outbox_pending": pending,
                "events_accepted": processor.seen,
                "delivery_failing": self._failing_workers(),
            },
        )

    def _health(self, endpoint: str) -> tuple[bool, dict[str, Any]]:
        """On the metrics thread: the checks, with the loop's own liveness."""
        checks = run_checks(
            self.settings,
            loop_age_s=time.monotonic() - self.last_loop,
            lag_s=self.lag_s,
            failing_workers=self._failing_workers(),
            only_liveness=endpoint == "livez",
        )
        return all(c.ok for c in checks), report(checks)

    def _failing_workers(self) -> dict[str, str]:
        return {} if self.dispatcher is None else self.dispatcher.failing()

    def _serve_metrics(self, cleanup: contextlib.ExitStack) -> None:
        """The metrics, the health checks and the dashboard, on `metrics_addr`."""
        if self.settings.metrics_addr is None:
            return
        from runwatch.stream.web.app import Dashboard
        from runwatch.stream.web.server import WebServer

        host, port = parse_address(self.settings.metrics_addr)
        token = self.settings.http.token
        dashboard = Dashboard(
            self.settings.database,
            reports=self.settings.reports.directory,
            token=None if token is None else token.get_secret_value(),
            metrics=self.metrics,
            health=self._health,
            live=self._live,
            slos=self.settings.objectives,
        )
        try:
            server = WebServer(host, port, dashboard)
        except OSError as exc:
            raise ServiceError(
                f"metrics_addr {self.settings.metrics_addr}: cannot listen ({exc.strerror})"
            ) from None
        server.start()
        self.web = server
        cleanup.callback(server.stop)
        self.console.write(f"metrics and health on {server.url}/metrics, /healthz")
        self.console.write(f"dashboard on {server.url}/")

    def _live(self) -> dict[str, Any]:
        """On the web thread: what only the running service knows."""
        return {
            "ingest_lag_seconds": round(self.lag_s, 3),
            "ingest_lag_bytes": self.lag_bytes,
            "loop_age_seconds": round(time.monotonic() - self.last_loop, 3),
            "started_at": self.started_at,
        }

    def _failed(self, payload: dict[str, Any], detail: str) -> None:
        """The console is the fallback: a notification that could not be delivered shows
        here, whatever channel it was for."""
        what = payload.get("summary") or payload.get("job") or payload.get("id")
        self.console.say(
            f"DELIVERY FAILED {payload.get('rule') or payload.get('job')} "
            f"run={payload.get('run_id')}: {detail} ({what})"
        )

    def _install_signals(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, self.stop)
        return previous


def _restore_signals(previous: dict[int, Callable[[int, FrameType | None], Any] | Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _backlog_workers() -> int:
    """Worker processes for a backlog: one per core, at most 4; none on one core."""
    cores = os.cpu_count() or 1
    return 0 if cores < 2 else min(cores, 4)


class IngestCounts:
    """Accepted events per configured source, counted into the metric only once committed.
    Files are labelled by the source whose paths they fall under (bounded cardinality)."""

    def __init__(self, sources: list[Source]) -> None:
        self.prefixes = [
            (os.path.abspath(static_prefix(path)), source.name)
            for source in sources
            for path in source.paths
        ]
        self.names: dict[str, str] = {}
        self.pending: dict[str, int] = {}

    def add(self, path: str, count: int) -> None:
        if count:
            name = self.names.get(path)
            if name is None:
                name = self.names[path] = next(
                    (n for prefix, n in self.prefixes if path.startswith(prefix)), "default"
                )
            self.pending[name] = self.pending.get(name, 0) + count

    def committed(self, metrics: Metrics) -> None:
        for name, count in self.pending.items():
            metrics.ingested.labels(name).inc(count)
        self.pending.clear()
