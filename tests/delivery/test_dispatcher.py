"""`Dispatcher` in-process: outbox entries in a real SQLite database, delivered by the real
webhook channel to a real loopback receiver. The subprocess tests in
tests/process/test_alerting.py see the same through `runwatch tail`; here the entries, the
retry timing and the stop are in the test's hands."""

from __future__ import annotations

import random
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from helpers import derived_events, record_alerts, wait_until
from receivers import WebhookReceiver
from runwatch.sinks.channels import WebhookConfig
from runwatch.stream.delivery.dispatcher import Dispatcher, Handler, Result, backoff
from runwatch.stream.delivery.handlers import channel_handler
from runwatch.stream.settings.alerts import DeliverySpec

DELIVERY = DeliverySpec(max_attempts=4, backoff_initial=0.2, backoff_max=1.0)
SEED = 11


def entries(db: Path) -> dict[str, dict[str, Any]]:
    """Outbox rows by id, read through a connection of the test's own."""
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        cursor = connection.execute(
            "SELECT id, state, attempts, next_attempt_at, last_error FROM outbox"
        )
        names = [d[0] for d in cursor.description]
        return {row[0]: dict(zip(names, row, strict=True)) for row in cursor}
    finally:
        connection.close()


def states(db: Path) -> dict[str, str]:
    return {entry_id: row["state"] for entry_id, row in entries(db).items()}


def sent_ids(hook: WebhookReceiver) -> list[str]:
    return [request.headers["webhook-id"] for request in hook.requests]


class Delivery:
    """A dispatcher with one webhook target, started and stopped around a test."""

    def __init__(self, db: Path, url: str, *, timeout: float = 2.0) -> None:
        self.failures: list[tuple[str, str]] = []
        self.records = 0
        channel = WebhookConfig(url=url, timeout=timeout).build("hook")
        self.dispatcher = Dispatcher(
            db,
            {"hook": channel_handler(channel)},
            DELIVERY,
            on_record=self._on_record,
            on_failure=lambda payload, detail: self.failures.append((payload["id"], detail)),
            rng=random.Random(SEED),
        )

    def _on_record(self) -> None:
        self.records += 1

    def __enter__(self) -> Dispatcher:
        self.dispatcher.start()
        return self.dispatcher

    def __exit__(self, *_: object) -> None:
        self.dispatcher.stop()


def test_each_entry_is_delivered_once_with_its_id(db: Path, hook: WebhookReceiver) -> None:
    record_alerts(db, "a1", "a2")
    delivery = Delivery(db, hook.url)
    with delivery as dispatcher:
        wait_until(lambda: set(states(db).values()) == {"delivered"}, "both delivered")
        record_alerts(db, "a3")  # a later entry, announced by a poke as the service does
        dispatcher.poke()
        wait_until(lambda: states(db)["a3"] == "delivered", "the later entry delivered")
    # a3 was claimed after a1 and a2 were done: had they been pending still, they came first
    assert sorted(sent_ids(hook)) == ["a1", "a2", "a3"]
    assert {row["attempts"] for row in entries(db).values()} == {1}
    sent = [event for event in derived_events(db) if event["type"] == "ALERT_SENT"]
    assert sorted(event["id"] for event in sent) == ["a1", "a2", "a3"]
    assert delivery.records == 3 and delivery.failures == []


def test_503_is_retried_with_exponential_backoff(db: Path, hook: WebhookReceiver) -> None:
    hook.script((503,), (503,))
    record_alerts(db, "b1")
    with Delivery(db, hook.url):
        wait_until(lambda: states(db)["b1"] == "delivered", "delivered after two 503s")
    first, second, third = hook.requests
    rng = random.Random(SEED)
    expected = [backoff(attempt, DELIVERY, None, rng) for attempt in (1, 2)]
    assert second.received_at - first.received_at >= expected[0] - 0.02
    assert third.received_at - second.received_at >= expected[1] - 0.02
    assert expected[0] <= DELIVERY.backoff_initial < expected[1] * 2
    assert sent_ids(hook) == ["b1"] * 3
    assert entries(db)["b1"]["attempts"] == 3


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured(db: Path, hook: WebhookReceiver, status: int) -> None:
    """The receiver's Retry-After, not the (shorter) backoff, decides the next attempt."""
    hook.script((status, {"Retry-After": "1"}))
    record_alerts(db, "c1")
    with Delivery(db, hook.url):
        wait_until(lambda: states(db)["c1"] == "delivered", "delivered after Retry-After")
    first, second = hook.requests
    assert second.received_at - first.received_at >= 0.98
    assert entries(db)["c1"]["attempts"] == 2


def test_wait_drained_returns_once_every_entry_is_done(db: Path, hook: WebhookReceiver) -> None:
    """`replay --deliver` waits on this: an entry waiting for its retry is not done yet."""
    hook.script((503, {"Retry-After": "1"}))
    record_alerts(db, "w1", "w2")
    with Delivery(db, hook.url) as dispatcher:
        waiter = threading.Thread(target=dispatcher.wait_drained, daemon=True)
        waiter.start()
        waiter.join(10)
        assert not waiter.is_alive(), "drained"
        assert states(db) == {"w1": "delivered", "w2": "delivered"}
    assert len(hook.requests) == 3


def test_4xx_is_not_retried_and_is_marked_failed(db: Path, hook: WebhookReceiver) -> None:
    hook.script((400,))
    record_alerts(db, "d1")
    delivery = Delivery(db, hook.url)
    with delivery as dispatcher:
        wait_until(lambda: states(db)["d1"] == "failed", "marked failed")
        record_alerts(db, "d2")
        dispatcher.poke()
        wait_until(lambda: states(db)["d2"] == "delivered", "the next entry delivered")
    assert sent_ids(hook) == ["d1", "d2"], "the failed entry was not attempted again"
    failed = entries(db)["d1"]
    assert (failed["attempts"], failed["last_error"]) == (1, "HTTP 400")
    assert delivery.failures == [("d1", "HTTP 400")]
    [event] = [e for e in derived_events(db) if e["type"] == "ALERT_FAILED"]
    assert (event["id"], event["error"], event["attempts"]) == ("d1", "HTTP 400", 1)


def test_retries_end_at_max_attempts(db: Path, hook: WebhookReceiver) -> None:
    hook.script(*[(503, {"Retry-After": "0"})] * DELIVERY.max_attempts)
    record_alerts(db, "e1")
    delivery = Delivery(db, hook.url)
    with delivery:
        wait_until(lambda: states(db)["e1"] == "failed", "failed after max_attempts")
    assert sent_ids(hook) == ["e1"] * DELIVERY.max_attempts
    assert entries(db)["e1"]["attempts"] == DELIVERY.max_attempts
    assert delivery.failures == [("e1", "HTTP 503")]


def test_a_failing_handler_is_retried_not_fatal(db: Path, hook: WebhookReceiver) -> None:
    """A bug in one handler must not stop its channel's thread."""
    calls: list[str] = []

    def flaky(payload: dict[str, Any]) -> Result:
        calls.append(payload["id"])
        if len(calls) == 1:
            raise RuntimeError("bug")
        return Result("delivered")

    record_alerts(db, "f1")
    handlers: dict[str, Handler] = {"hook": flaky}
    dispatcher = Dispatcher(db, handlers, DeliverySpec(backoff_initial=0.05, backoff_max=0.05))
    dispatcher.start()
    try:
        wait_until(lambda: states(db)["f1"] == "delivered", "delivered on the second try")
    finally:
        dispatcher.stop()
    assert calls == ["f1", "f1"]
    assert entries(db)["f1"]["attempts"] == 2


def test_restart_resumes_pending_entries_and_never_resends_delivered_ones(
    db: Path, hook: WebhookReceiver
) -> None:
    """Stopped with one attempt in flight and more entries waiting: after a restart the
    in-flight one is sent again with the same id, the waiting ones once, the delivered
    ones never."""
    record_alerts(db, "g1", "g2")
    first = Delivery(db, hook.url, timeout=1.5)
    with first as dispatcher:
        wait_until(lambda: set(states(db).values()) == {"delivered"}, "g1 and g2 delivered")
        hook.script(("hang", 2.5))  # longer than the timeout: this attempt cannot succeed
        record_alerts(db, "g3")
        dispatcher.poke()
        hook.wait_for(3)
        record_alerts(db, "g4")
    # stop() does not wait for an attempt in flight; let it end, then look at the entries
    for thread in first.dispatcher.threads:
        thread.join(5)
    assert not any(thread.is_alive() for thread in first.dispatcher.threads)
    assert states(db) == {"g1": "delivered", "g2": "delivered", "g3": "pending", "g4": "pending"}
    assert entries(db)["g3"]["attempts"] == 0, "an attempt cut short by stop is not counted"

    with Delivery(db, hook.url):
        wait_until(lambda: set(states(db).values()) == {"delivered"}, "g3 and g4 delivered")
    ids = sent_ids(hook)
    assert sorted(ids[:2]) == ["g1", "g2"]
    assert ids[2] == "g3" and sorted(ids[3:]) == ["g3", "g4"]


def test_stop_wakes_an_idle_dispatcher_at_once(db: Path, hook: WebhookReceiver) -> None:
    """An idle channel thread waits up to 5 s for work; stop (which waits 0.5 s) wakes it."""
    record_alerts(db, "h1")
    delivery = Delivery(db, hook.url)
    with delivery:
        wait_until(lambda: states(db)["h1"] == "delivered", "delivered")
    assert delivery.dispatcher.threads
    assert not any(thread.is_alive() for thread in delivery.dispatcher.threads)
