"""The dispatcher: carries out the outbox (alerts to channels, completion jobs).

Delivery contract: at least once, with the entry's stable id on every attempt, so receivers
can drop repeats. An entry's state changes only after its attempt ended, in one transaction
with the derived event that records it (ALERT_SENT, ALERT_FAILED, RUN_ARCHIVED, …), so after
`kill -9` an undelivered entry is attempted again and a delivered one never is. One worker
thread per target: a receiver that hangs delays only its own channel. A worker whose
database fails (a restart, a lost connection) reconnects and goes on, waiting longer each
time; meanwhile `failing()` names it, for the health checks.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from runwatch.projections.events import format_time
from runwatch.sinks.store import Connection, connect, is_postgres, outbox, transaction
from runwatch.stream.settings.alerts import DeliverySpec

MAX_RETRY_AFTER = 3600.0
LEASE_MARGIN_S = 10.0
"""How much longer than its longest attempt an entry stays leased to its processor: the
attempt's own database work, and clocks of processors a little apart."""
JOB_ATTEMPT_S = 30.0
"""The longest attempt of a handler that declares none (the completion jobs: a report or an
archive of one run takes seconds). A lease is also how long a dead processor's entry waits
for another; a job that overruns it is done twice at worst, and recorded once."""
RESTART_BACKOFF_S = (0.5, 30.0)
"""A worker whose database failed starts over after this long, doubling up to the cap."""


@dataclass(frozen=True, slots=True)
class Result:
    """How one attempt ended, whatever carried it out."""

    status: Literal["delivered", "retry", "failed"]
    detail: str = ""
    retry_after: float | None = None
    derived: list[dict[str, Any]] = field(default_factory=list)
    writes: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    """(table, row) rows the job adds, recorded with its derived events."""


Handler = Callable[[dict[str, Any]], Result]


def backoff(
    attempts: int, delivery: DeliverySpec, retry_after: float | None, rng: random.Random
) -> float:
    """Seconds before the next attempt: the receiver's Retry-After when it gave one, else
    exponential from `backoff_initial`, capped, with jitter so retries do not bunch up."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), MAX_RETRY_AFTER)
    ceiling = min(
        float(delivery.backoff_max), float(delivery.backoff_initial) * 2.0 ** max(attempts - 1, 0)
    )
    return ceiling * (0.5 + rng.random() / 2)


class Dispatcher:
    """Delivers pending outbox entries of the given targets until stopped."""

    def __init__(
        self,
        database: Path | str,
        handlers: dict[str, Handler],
        delivery: DeliverySpec,
        *,
        on_record: Callable[[], None] = lambda: None,
        on_failure: Callable[[dict[str, Any], str], None] = lambda _p, _d: None,
        rng: random.Random | None = None,
    ) -> None:
        self.database = database
        self.handlers = handlers
        self.delivery = delivery
        self.on_record = on_record
        self.on_failure = on_failure
        self.rng = rng or random.Random()
        self.stopping = threading.Event()
        self.wakeups = {target: threading.Event() for target in handlers}
        self.drained: set[str] = set()
        """Targets whose worker last found nothing pending, due or not, and none in flight."""
        self.drained_changed = threading.Condition()
        self.threads: list[threading.Thread] = []
        self.trouble: dict[str, str] = {}
        """Target → why its worker is not working now (until its next claim succeeds)."""
        self.leases = {
            target: getattr(handler, "longest_attempt_s", JOB_ATTEMPT_S) + LEASE_MARGIN_S
            for target, handler in handlers.items()
        }
        self.shared = is_postgres(database)
        # Alone on SQLite, every new entry comes with a poke; processors sharing PostgreSQL
        # also deliver what the others decided, unannounced, so they look more often.
        self.longest_wait = 1.0 if is_postgres(database) else 5.0

    def start(self) -> None:
        for target in self.handlers:
            thread = threading.Thread(
                target=self._serve, args=(target,), daemon=True, name=f"deliver-{target}"
            )
            thread.start()
            self.threads.append(thread)

    def poke(self) -> None:
        """New entries may be pending: look now rather than at the next timeout."""
        for wakeup in self.wakeups.values():
            wakeup.set()

    def stop(self, wait: float = 0.5) -> None:
        """Stop taking entries. An attempt still in flight is left to its thread (a daemon):
        its entry stays pending and is attempted again, with the same id, after a restart."""
        self.stopping.set()
        self.poke()
        deadline = time.monotonic() + wait
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def failing(self) -> dict[str, str]:
        """Workers that do not deliver now, and why: a database error they are waiting to
        retry, or a thread that ended (any thread)."""
        failing = dict(self.trouble)
        if not self.stopping.is_set():
            for target, thread in zip(self.handlers, self.threads, strict=False):
                if not thread.is_alive():
                    failing.setdefault(target, "its worker thread ended")
        return failing

    def wait_drained(self) -> None:
        """Until every target's worker found its outbox empty (nothing pending, due or not)
        and has done its deferred work: for a caller that adds no entries meanwhile."""
        with self.drained_changed:
            self.drained_changed.wait_for(lambda: self.drained.issuperset(self.handlers))

    def _set_drained(self, target: str, drained: bool) -> None:
        with self.drained_changed:
            if drained:
                self.drained.add(target)
                self.drained_changed.notify_all()
            else:
                self.drained.discard(target)

    def _serve(self, target: str) -> None:
        """Deliver `target`'s entries until stopped, starting over after any error."""
        delay = RESTART_BACKOFF_S[0]
        while not self.stopping.is_set():
            try:
                self._work(target)
            except Exception as exc:  # the database (or a bug): this channel must go on
                if target not in self.trouble:
                    delay = RESTART_BACKOFF_S[0]  # it had recovered since the last error
                self.trouble[target] = _describe(exc)
                self.stopping.wait(delay)
                delay = min(delay * 2, RESTART_BACKOFF_S[1])

    def _work(self, target: str) -> None:
        connection = connect(self.database)
        wakeup = self.wakeups[target]
        try:
            while not self.stopping.is_set():
                wakeup.clear()
                entry = self._claim(connection, target)
                self.trouble.pop(target, None)
                if entry is None:
                    self._idle(target)
                    due = outbox.next_attempt_at(connection, target)
                    self._set_drained(target, due is None)
                    wakeup.wait(_sleep_for(due, self.longest_wait))
                    continue
                self._set_drained(target, False)
                self._attempt(connection, target, entry)
            self._idle(target)  # a clean stop leaves deferred work (the report index) done
        finally:
            with contextlib.suppress(Exception):  # a broken connection may fail to close
                connection.close()

    def _claim(self, connection: Connection, target: str) -> outbox.Claim | None:
        """The next due entry. Processors sharing PostgreSQL lease it for longer than an
        attempt can take: if this one dies mid-attempt, another retries it once the lease
        ends; if an attempt overruns anyway, its outcome is not written (see `Claim.token`)."""
        if self.shared:
            return outbox.lease(connection, target, time.time(), self.leases[target])
        return outbox.next_due(connection, target, time.time())

    def _idle(self, target: str) -> None:
        """A handler's deferred work, done when its queue is empty."""
        when_idle = getattr(self.handlers[target], "when_idle", None)
        if when_idle is not None:
            when_idle()

    def _attempt(self, connection: Connection, target: str, entry: outbox.Claim) -> None:
        kind, attempts = entry.kind, entry.attempts
        payload = orjson.loads(entry.payload)
        try:
            result = self.handlers[target](payload)
        except Exception as exc:  # a bug in a handler must not stop the channel
            result = Result("retry", f"internal error: {type(exc).__name__}")
        if self.stopping.is_set() and result.status != "delivered":
            return  # shutting down mid-attempt: leave it pending, untouched
        attempts += 1
        status = result.status
        if status == "retry" and attempts >= self.delivery.max_attempts:
            status = "failed"
        now = time.time()
        stamp = format_time(int(now * 1e6)) or ""
        derived = list(result.derived)
        if kind == "alert" and status != "retry":
            derived.append(_alert_event(payload, target, status, attempts, result.detail, now))
        with transaction(connection):
            if status == "retry":
                delay = backoff(attempts, self.delivery, result.retry_after, self.rng)
                held = outbox.retry_later(connection, entry, attempts, now + delay, result.detail)
            else:
                error = None if status == "delivered" else result.detail
                held = outbox.settle(connection, entry, status, attempts, error, stamp)
            if held:
                outbox.record(connection, derived, result.writes, stamp)
        if not held:
            return  # the lease ran out: the processor that took the entry over records it
        if status == "failed":
            self.on_failure(payload, result.detail)
        if derived:
            self.on_record()


def _alert_event(
    payload: dict[str, Any], channel: str, status: str, attempts: int, detail: str, now: float
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "ALERT_SENT" if status == "delivered" else "ALERT_FAILED",
        "event_time": format_time(int(now * 1e6)),
        "run_id": payload.get("run_id"),
        "id": payload.get("id"),
        "alert_id": payload.get("alert_id"),
        "rule": payload.get("rule"),
        "state": payload.get("state"),
        "channel": channel,
        "attempts": attempts,
    }
    if status != "delivered":
        event["error"] = detail
    return event


def _describe(exc: Exception) -> str:
    """An error in a line, for the health checks: its type and the first line of its text
    (database drivers name the server and the cause, never a password)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"[:300].rstrip(": ")


def _sleep_for(due: float | None, longest: float) -> float:
    """Until the next retry falls `due`, at most `longest`: new entries also poke the thread."""
    if due is None:
        return longest
    return min(max(due - time.time(), 0.005), longest)
