"""Processors sharing PostgreSQL lease outbox entries: two real dispatchers on a real
PostgreSQL schema, delivering to a real loopback receiver that answers slowly. A lease must
outlast the attempt it covers, and an attempt that lost its lease must not write its outcome
over the one of the processor that took the entry over."""

from __future__ import annotations

import random
import time
from typing import Any

from helpers import derived_events, record_alerts, wait_until
from receivers import WebhookReceiver
from runwatch.sinks.channels import WebhookConfig
from runwatch.sinks.store import connect, open_store, outbox, transaction
from runwatch.stream.delivery.dispatcher import LEASE_MARGIN_S, Dispatcher, Handler, Result
from runwatch.stream.delivery.handlers import channel_handler
from runwatch.stream.settings.alerts import DeliverySpec

DELIVERY = DeliverySpec(max_attempts=1, backoff_initial=0.2, backoff_max=1.0)
OLD_LEASE_S = 15.0
"""The fixed lease processors took before it was derived from the channel's timeout."""


def rows(url: str) -> dict[str, tuple[str, int, float]]:
    """(state, attempts, next_attempt_at) by entry id."""
    store = open_store(url)
    try:
        found = store.db.execute("SELECT id, state, attempts, next_attempt_at FROM outbox")
        return {row[0]: (row[1], int(row[2]), float(row[3])) for row in found}
    finally:
        store.close()


def test_a_slow_attempt_keeps_its_lease_so_a_second_processor_does_not_resend(
    postgres_url: str, hook: WebhookReceiver
) -> None:
    """The receiver answers after 16 s, inside the channel's 20 s timeout: the attempt is
    good, and no other processor may take the entry meanwhile and send it again."""
    hook.script(("hang", OLD_LEASE_S + 1.0))
    record_alerts(postgres_url, "s1")
    channel = WebhookConfig(url=hook.url, timeout=20.0).build("hook")
    failures: list[str] = []
    dispatchers = [
        Dispatcher(
            postgres_url,
            {"hook": channel_handler(channel)},
            DELIVERY,
            on_failure=lambda payload, _detail: failures.append(payload["id"]),
            rng=random.Random(n),
        )
        for n in range(2)
    ]
    assert all(d.leases["hook"] >= 3 * 20.0 + LEASE_MARGIN_S for d in dispatchers)
    for dispatcher in dispatchers:
        dispatcher.start()
    try:
        wait_until(lambda: rows(postgres_url)["s1"][0] != "pending", "the entry settled", 40)
        settled_with = len(hook.requests)
    finally:
        for dispatcher in dispatchers:
            dispatcher.stop()
    assert settled_with == 1, "sent again while the first attempt was still in flight"
    assert rows(postgres_url)["s1"][:2] == ("delivered", 1)
    assert [e["type"] for e in derived_events(postgres_url)] == ["ALERT_SENT"]
    assert failures == []


def test_an_outcome_is_not_written_once_another_processor_leased_the_entry(
    postgres_url: str,
) -> None:
    """An attempt that overran its lease fails ("failed" would be ALERT_FAILED); meanwhile
    a second processor, whose clock says the lease is over, leased the entry. The first
    must neither settle it nor record ALERT_FAILED nor report a failure."""
    record_alerts(postgres_url, "t1")
    other = connect(postgres_url)
    taken: list[outbox.Claim] = []
    failures: list[str] = []

    def overrun(payload: dict[str, Any]) -> Result:
        if payload["id"] == "t1":
            later = time.time() + 3600.0
            claim = outbox.lease(other, "hook", later, 60.0)
            assert claim is not None and claim.id == "t1"
            taken.append(claim)
            return Result("failed", "HTTP 400")
        return Result("delivered")

    handlers: dict[str, Handler] = {"hook": overrun}
    dispatcher = Dispatcher(
        postgres_url,
        handlers,
        DELIVERY,
        on_failure=lambda payload, _detail: failures.append(payload["id"]),
    )
    dispatcher.start()
    try:
        wait_until(lambda: bool(taken), "the entry leased by the other processor")
        record_alerts(postgres_url, "t2")
        dispatcher.poke()
        # one thread per target: t2 settled means the t1 attempt has ended
        wait_until(lambda: rows(postgres_url)["t2"][0] == "delivered", "the next entry")
    finally:
        dispatcher.stop()
    [claim] = taken
    assert rows(postgres_url)["t1"] == ("pending", 0, claim.token), "left to the new holder"
    assert [e["id"] for e in derived_events(postgres_url)] == ["t2"]
    assert failures == []
    with transaction(other):  # the new holder's outcome is the one written
        assert outbox.settle(other, claim, "delivered", 1, None, "2026-01-05T08:00:02Z")
    other.close()
    assert rows(postgres_url)["t1"][:2] == ("delivered", 1)


def test_a_lost_lease_writes_nothing_in_sql(postgres_url: str) -> None:
    """The fence itself: after another lease, the first claim's retry and settle match no
    row, while the second claim's do."""
    record_alerts(postgres_url, "u1")
    first_connection, second_connection = connect(postgres_url), connect(postgres_url)
    try:
        now = time.time()
        first = outbox.lease(first_connection, "hook", now, 0.5)
        assert first is not None
        assert outbox.lease(second_connection, "hook", now, 0.5) is None, "leased already"
        second = outbox.lease(second_connection, "hook", first.token, 0.5)
        assert second is not None and second.token > first.token
        assert not outbox.retry_later(first_connection, first, 1, now + 60, "timeout")
        assert not outbox.settle(first_connection, first, "failed", 1, "timeout", "t")
        assert rows(postgres_url)["u1"] == ("pending", 0, second.token)
        assert outbox.retry_later(second_connection, second, 1, now + 60, "HTTP 503")
        assert rows(postgres_url)["u1"] == ("pending", 1, now + 60)
    finally:
        first_connection.close()
        second_connection.close()
