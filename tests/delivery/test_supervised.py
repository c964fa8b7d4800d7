"""A delivery worker outlives its database's failures: a real dispatcher on a real
PostgreSQL schema, sending to a loopback webhook receiver, while its outbox table is taken
away for a moment. Meanwhile the health checks (`/healthz` and `runwatch health`, through
the status file) name the worker; afterwards it delivers again by itself."""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson

from helpers import record_alerts, wait_until
from receivers import WebhookReceiver
from runwatch.sinks.channels import WebhookConfig
from runwatch.sinks.store import connect, open_store
from runwatch.stream.delivery.dispatcher import Dispatcher
from runwatch.stream.delivery.handlers import channel_handler
from runwatch.stream.services.health import delivery_workers, from_status_file, status_path
from runwatch.stream.settings.alerts import DeliverySpec
from runwatch.stream.settings.service import Settings


def state(url: str, entry_id: str) -> str | None:
    store = open_store(url)
    try:
        row = store.db.execute("SELECT state FROM outbox WHERE id=?", (entry_id,)).fetchone()
        return None if row is None else str(row[0])
    finally:
        store.close()


def rename_outbox(url: str, old: str, new: str) -> None:
    connection = connect(url)
    try:
        connection.execute(f"ALTER TABLE {old} RENAME TO {new}")
    finally:
        connection.close()


def test_a_worker_survives_a_database_outage_and_health_names_it_meanwhile(
    postgres_url: str, hook: WebhookReceiver
) -> None:
    channel = WebhookConfig(url=hook.url).build("hook")
    record_alerts(postgres_url, "v1")
    dispatcher = Dispatcher(postgres_url, {"hook": channel_handler(channel)}, DeliverySpec())
    dispatcher.start()
    try:
        wait_until(lambda: state(postgres_url, "v1") == "delivered", "the first entry")
        assert dispatcher.failing() == {}
        assert delivery_workers(dispatcher.failing()).ok
        rename_outbox(postgres_url, "outbox", "outbox_away")
        try:
            wait_until(lambda: "hook" in dispatcher.failing(), "the worker's failure noticed")
            check = delivery_workers(dispatcher.failing())
            assert not check.ok
            assert check.detail.startswith("not delivering: hook: UndefinedTable")
            assert "password" not in check.detail
        finally:
            rename_outbox(postgres_url, "outbox_away", "outbox")
        record_alerts(postgres_url, "v2")
        dispatcher.poke()
        wait_until(lambda: state(postgres_url, "v2") == "delivered", "delivered after", 60)
        assert dispatcher.failing() == {}
        assert all(thread.is_alive() for thread in dispatcher.threads)
    finally:
        dispatcher.stop()
        channel.close()
    assert [request.headers["webhook-id"] for request in hook.requests] == ["v1", "v2"]


def test_runwatch_health_reads_the_workers_from_the_status_file(tmp_path: Path) -> None:
    """`runwatch health` runs in another process: the service's status file carries what
    `failing()` said at its last tick."""
    settings = Settings(database=tmp_path / "rw.db", archive={"directory": tmp_path / "a"})
    status = {
        "pid": os.getpid(),
        "updated_unix": time.time(),
        "ingest_lag_seconds": 0.0,
        "delivery_failing": {"hook": "OperationalError: the database system is starting up"},
    }
    status_path(settings.database).write_bytes(orjson.dumps(status))
    checks = {check.name: check for check in from_status_file(settings)}
    assert not checks["delivery_workers"].ok
    assert "hook: OperationalError" in checks["delivery_workers"].detail
    status["delivery_failing"] = {}
    status_path(settings.database).write_bytes(orjson.dumps(status))
    checks = {check.name: check for check in from_status_file(settings)}
    assert checks["delivery_workers"].ok
    status_path(settings.database).unlink()
    checks = {check.name: check for check in from_status_file(settings)}
    assert not checks["delivery_workers"].ok, "no service, no delivery"
