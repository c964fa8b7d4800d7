"""Alerts end to end: a real `runwatch tail`, a real HTTP receiver and SMTP server, kill -9."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from helpers import TailProcess, run_cli
from receivers import SmtpReceiver, WebhookReceiver
from runwatch.sinks.channels import verify

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def alerts_file(
    path: Path,
    hook_url: str,
    *,
    throttle: str = "15m",
    timeout: str = "0.5s",
    max_attempts: int = 6,
    extra_channels: str = "",
    channels: str = "console, hook",
    stall_throttle: str = "60m",
) -> Path:
    path.write_text(f"""
alert_lookback: 1h
delivery: {{max_attempts: {max_attempts}, backoff_initial: 0.2s, backoff_max: 1s}}
channels:
  console: {{type: console}}
  hook: {{type: webhook, url: "{hook_url}", secret: {SECRET}, timeout: {timeout}}}
{extra_channels}
rules:
  - name: run_failure
    severity: critical
    match: [{{type: RUN_COMPLETED, status: [failed, partial]}}, {{type: run_failed}}]
    channels: [{channels}]
    throttle: {throttle}
    summary: "run {{run_id}} {{status}}"
  - name: run_stalled
    severity: medium
    match: [{{type: RUN_STALLED}}]
    resolve: [{{type: RUN_RECOVERED}}]
    send_resolved: true
    channels: [console, hook]
    throttle: {stall_throttle}
""")
    return path


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event(kind: str, run_id: str, at: datetime, n: int, **extra: Any) -> bytes:
    return (
        orjson.dumps(
            {
                "event_id": f"{run_id}-{n}-{kind}",
                "event_type": kind,
                "run_id": run_id,
                "timestamp": stamp(at),
                **extra,
            }
        )
        + b"\n"
    )


def failing_run(run_id: str, at: datetime | None = None) -> bytes:
    at = at or datetime.now(UTC)
    return b"".join(
        [
            event("run_started", run_id, at, 1),
            event("task_started", run_id, at, 2, task_id="T1"),
            event("task_failed", run_id, at, 3, task_id="T1", payload={"error": "boom"}),
            event("run_failed", run_id, at, 4),
        ]
    )


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(data)


def outbox(db: Path) -> list[dict[str, Any]]:
    """The outbox rows, or none while the service has not created the database yet."""
    if not db.exists():
        return []
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        try:
            cursor = connection.execute(
                "SELECT id, kind, target, run_id, state, attempts, last_error "
                "FROM outbox ORDER BY decided_at, id"
            )
        except sqlite3.OperationalError:
            return []
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]
    finally:
        connection.close()


def hook_entries(db: Path) -> list[dict[str, Any]]:
    return [row for row in outbox(db) if row["target"] == "hook"]


def settled(db: Path, *run_ids: str) -> bool:
    """The positive sign that no more requests are coming: every decision about these runs
    is made (their RUN_COMPLETED asked for a report in the very commit that decided its
    alerts) and no hook entry is pending, so the dispatcher has nothing left to send."""
    rows = outbox(db)
    reported = {row["run_id"] for row in rows if (row["kind"], row["target"]) == ("job", "report")}
    return set(run_ids) <= reported and all(row["state"] != "pending" for row in hook_entries(db))


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    folder = tmp_path / "logs-in"
    folder.mkdir()
    return folder


def tail(tmp_path: Path, logs: Path, alerts: Path, *args: str) -> TailProcess:
    return TailProcess(tmp_path, tmp_path / "rw.db", logs, args=("--alerts", str(alerts), *args))


def test_failed_run_is_announced_once_signed_and_alertmanager_shaped(
    tmp_path: Path, logs: Path
) -> None:
    """The core promise: a failure reaches the receiver within seconds, once, verifiably."""
    with (
        WebhookReceiver() as hook,
        tail(tmp_path, logs, alerts_file(tmp_path / "alerts.yaml", hook.url)) as service,
    ):
        service.wait_until(lambda: (tmp_path / "rw.db").exists())
        append(logs / "events.jsonl", failing_run("R1"))
        service.wait_until(lambda: settled(tmp_path / "rw.db", "R1"))
        [request] = hook.requests  # run_failed and RUN_COMPLETED are one problem
        headers = request.headers
        assert verify(
            SECRET,
            headers["webhook-id"],
            int(headers["webhook-timestamp"]),
            request.body,
            headers["webhook-signature"],
        )
        body = request.json
        assert body["version"] == "4" and body["status"] == "firing"
        labels = body["alerts"][0]["labels"]
        assert labels["alertname"] == "run_failure" and labels["severity"] == "critical"
        assert labels["run_id"] == "R1"
        assert body["runwatch"]["id"] == headers["webhook-id"]
        service.wait_until(
            lambda: [r["state"] for r in hook_entries(tmp_path / "rw.db")] == ["delivered"]
        )
        assert service.stop() == 0
    assert "CRITICAL run_failure" in service.output()
    listed = run_cli("alerts", "list", "--db", tmp_path / "rw.db", "--json")
    assert listed.returncode == 0
    states = {(row["channel"], row["state"]) for row in orjson.loads(listed.stdout)}
    assert states == {("console", "delivered"), ("hook", "delivered")}
    trail = (tmp_path / "logs" / "monitor.jsonl").read_text()
    assert '"type":"ALERT_SENT"' in trail


def test_receiver_down_then_up_gets_the_alert_once(tmp_path: Path, logs: Path) -> None:
    """Alertmanager users lose alerts when a receiver restarts; here they wait and arrive."""
    hook = WebhookReceiver().start()
    hook.stop()  # keep its port, refuse connections
    with tail(
        tmp_path, logs, alerts_file(tmp_path / "alerts.yaml", hook.url, max_attempts=30)
    ) as service:
        append(logs / "events.jsonl", failing_run("R1"))
        service.wait_until(
            lambda: any(r["attempts"] >= 2 for r in hook_entries(tmp_path / "rw.db"))
        )
        hook.start()
        try:
            service.wait_until(lambda: settled(tmp_path / "rw.db", "R1"))
            assert [r["state"] for r in hook_entries(tmp_path / "rw.db")] == ["delivered"]
            assert len(hook.requests) == 1
        finally:
            hook.stop()
        assert service.stop() == 0


def test_503_then_200_and_429_retry_after_is_honoured(tmp_path: Path, logs: Path) -> None:
    """Retries follow the receiver's word: Retry-After: 2 means no new attempt for 2 s."""
    with (
        WebhookReceiver() as hook,
        tail(tmp_path, logs, alerts_file(tmp_path / "alerts.yaml", hook.url)) as service,
    ):
        hook.script((503,), (429, {"Retry-After": "2"}))
        append(logs / "events.jsonl", failing_run("R1"))
        first, second, third = hook.wait_for(3, timeout=15)
        assert third.received_at - second.received_at >= 1.95
        assert second.received_at - first.received_at < 1.9  # backoff, not Retry-After
        assert {r.headers["webhook-id"] for r in (first, second, third)} == {
            first.headers["webhook-id"]
        }, "a retry keeps its id"
        service.wait_until(
            lambda: [r["state"] for r in hook_entries(tmp_path / "rw.db")] == ["delivered"]
        )
        assert hook_entries(tmp_path / "rw.db")[0]["attempts"] == 3
        assert service.stop() == 0


def test_hanging_receiver_times_out_and_is_retried(tmp_path: Path, logs: Path) -> None:
    """A receiver that never answers must not wedge delivery."""
    with (
        WebhookReceiver() as hook,
        tail(
            tmp_path, logs, alerts_file(tmp_path / "alerts.yaml", hook.url, timeout="0.3s")
        ) as service,
    ):
        hook.script(("hang", 1.5))
        append(logs / "events.jsonl", failing_run("R1"))
        first, second = hook.wait_for(2, timeout=10)
        assert second.received_at - first.received_at < 1.5, "retried before the hang ended"
        service.wait_until(
            lambda: [r["state"] for r in hook_entries(tmp_path / "rw.db")] == ["delivered"]
        )
        assert service.stop() == 0


def test_400_is_not_retried_and_the_failure_reaches_the_console(tmp_path: Path, logs: Path) -> None:
    """A request the receiver rejects will never succeed: say so at once, on the console."""
    with (
        WebhookReceiver() as hook,
        tail(tmp_path, logs, alerts_file(tmp_path / "alerts.yaml", hook.url)) as service,
    ):
        hook.script((400,))
        append(logs / "events.jsonl", failing_run("R1"))
        service.wait_until(lambda: settled(tmp_path / "rw.db", "R1"))
        assert [r["state"] for r in hook_entries(tmp_path / "rw.db")] == ["failed"]
        assert len(hook.requests) == 1
        assert service.stop() == 0
    assert "DELIVERY FAILED run_failure" in service.output()
    assert '"type":"ALERT_FAILED"' in (tmp_path / "logs" / "monitor.jsonl").read_text()


def test_kill_9_before_delivery_delivers_after_restart(tmp_path: Path, logs: Path) -> None:
    """A decision recorded but not yet delivered survives kill -9 and is delivered once."""
    hook = WebhookReceiver().start()
    hook.stop()
    service = tail(tmp_path, logs, alerts_file(tmp_path / "alerts.yaml", hook.url, max_attempts=50))
    service.start()
    append(logs / "events.jsonl", failing_run("R1") + failing_run("R2"))
    service.wait_until(lambda: len(hook_entries(tmp_path / "rw.db")) == 2)
    service.kill()
    hook.start()
    try:
        service.start()
        service.wait_until(lambda: settled(tmp_path / "rw.db", "R1", "R2"))
        requests = hook.requests
        ids = [r.headers["webhook-id"] for r in requests]
        assert len(ids) == 2 and len(set(ids)) == 2
        assert {r.json["runwatch"]["run_id"] for r in requests} == {"R1", "R2"}
        assert service.stop() == 0
    finally:
        hook.stop()


def test_kill_9_during_delivery_resends_only_the_unacknowledged(tmp_path: Path, logs: Path) -> None:
    """Killed while a request is in flight: that one is sent again with the same id (a
    genuine retry); what was acknowledged before the kill is never sent again."""
    with WebhookReceiver() as hook:
        service = tail(
            tmp_path, logs, alerts_file(tmp_path / "alerts.yaml", hook.url, timeout="5s")
        )
        service.start()
        append(logs / "events.jsonl", failing_run("R1"))
        [acknowledged] = hook.wait_for(1, timeout=10)
        service.wait_until(
            lambda: [r["state"] for r in hook_entries(tmp_path / "rw.db")] == ["delivered"]
        )
        hook.script(("hang", 3.0))
        append(logs / "events.jsonl", failing_run("R2"))
        hook.wait_for(2, timeout=10)
        service.kill()  # the R2 request is still waiting for its answer
        service.start()
        hook.wait_for(3, timeout=15)
        service.wait_until(lambda: settled(tmp_path / "rw.db", "R1", "R2"))
        assert [r["state"] for r in hook_entries(tmp_path / "rw.db")] == ["delivered"] * 2
        ids = [r.headers["webhook-id"] for r in hook.requests]
        assert ids.count(acknowledged.headers["webhook-id"]) == 1
        assert len(ids) == 3 and ids[1] == ids[2]
        assert service.stop() == 0


def test_replay_records_but_never_notifies_and_the_service_does_not_repeat(
    tmp_path: Path, logs: Path
) -> None:
    """Rebuilding from the logs must not page anyone about the past, then or later: the
    service started on the rebuilt database delivers a new failure, and only that."""
    append(logs / "events.jsonl", failing_run("R1") + failing_run("R2"))
    with WebhookReceiver() as hook:
        alerts = alerts_file(tmp_path / "alerts.yaml", hook.url)
        done = run_cli("replay", logs, "--db", tmp_path / "rw.db", "--alerts", alerts)
        assert done.returncode == 0, done.stderr
        assert {r["state"] for r in hook_entries(tmp_path / "rw.db")} == {"recorded"}
        assert len(hook_entries(tmp_path / "rw.db")) == 2
        with tail(tmp_path, logs, alerts) as service:
            append(logs / "events.jsonl", failing_run("R3"))
            service.wait_until(lambda: settled(tmp_path / "rw.db", "R1", "R2", "R3"))
            assert service.stop() == 0
        assert [r.json["runwatch"]["run_id"] for r in hook.requests] == ["R3"]
        states = {r["run_id"]: r["state"] for r in hook_entries(tmp_path / "rw.db")}
        assert states == {"R1": "recorded", "R2": "recorded", "R3": "delivered"}


def test_brand_new_service_on_old_logs_stays_quiet(tmp_path: Path, logs: Path) -> None:
    """History older than alert_lookback is not news; it is recorded as skipped."""
    old = datetime.now(UTC) - timedelta(hours=3)
    append(logs / "events.jsonl", failing_run("OLD", old))
    with (
        WebhookReceiver() as hook,
        tail(tmp_path, logs, alerts_file(tmp_path / "alerts.yaml", hook.url)) as service,
    ):
        service.wait_until(lambda: len(hook_entries(tmp_path / "rw.db")) == 1)
        append(logs / "events.jsonl", failing_run("NEW"))
        service.wait_until(lambda: settled(tmp_path / "rw.db", "OLD", "NEW"))
        [request] = hook.requests
        assert request.json["runwatch"]["run_id"] == "NEW"
        assert service.stop() == 0
    assert sorted(r["state"] for r in hook_entries(tmp_path / "rw.db")) == ["delivered", "skipped"]


def test_flapping_stall_gives_one_notification(tmp_path: Path, logs: Path) -> None:
    """A run that stalls and recovers over and over inside the window pages once."""
    with (
        WebhookReceiver() as hook,
        tail(
            tmp_path,
            logs,
            alerts_file(tmp_path / "alerts.yaml", hook.url),
            "--config",
            str(tmp_path / "rw.yaml"),
        ) as service,
    ):
        (tmp_path / "rw.yaml").write_text("stall_after: 0.6s\ntick_interval: 0.1s\n")
        path = logs / "events.jsonl"
        append(path, event("run_started", "F1", datetime.now(UTC), 0))
        for n in range(1, 4):
            service.wait_until(lambda n=n: _count(tmp_path, "RUN_STALLED") >= n)
            append(path, event("task_progress", "F1", datetime.now(UTC), n, task_id="T"))
            service.wait_until(lambda n=n: _count(tmp_path, "RUN_RECOVERED") >= n)
        # the last recovery is decided (the trail is written after its commit); once no hook
        # entry is pending, nothing more can be sent
        service.wait_until(lambda: settled(tmp_path / "rw.db"))
        assert len(hook_entries(tmp_path / "rw.db")) == 1
        assert len(hook.requests) == 1
        assert hook.requests[0].json["status"] == "firing"
        assert service.stop() == 0


def _count(tmp_path: Path, kind: str) -> int:
    trail = tmp_path / "logs" / "monitor.jsonl"
    return trail.read_text().count(f'"type":"{kind}"') if trail.exists() else 0


def test_email_channel_delivers_through_smtp(tmp_path: Path, logs: Path) -> None:
    """Mail is the channel of last resort for many teams: it must work end to end."""
    with SmtpReceiver() as smtp, WebhookReceiver() as hook:
        extra = (
            f"  mail: {{type: email, host: 127.0.0.1, port: {smtp.port}, "
            f"security: none, sender: rw@example.org, recipients: ops@example.org}}"
        )
        alerts = alerts_file(
            tmp_path / "alerts.yaml", hook.url, extra_channels=extra, channels="mail"
        )
        with tail(tmp_path, logs, alerts) as service:
            append(logs / "events.jsonl", failing_run("R1"))
            [mail] = smtp.wait_for(1, timeout=10)
            assert service.stop() == 0
    assert "CRITICAL" in mail.message["Subject"] and "R1" in mail.message["Subject"]


def test_alerts_test_command_reports_each_channel(tmp_path: Path) -> None:
    """`alerts test` is how a user checks a new webhook before trusting it with a real page."""
    with WebhookReceiver() as hook:
        env = {"ALERT_WEBHOOK_URL": hook.url, "ALERT_WEBHOOK_SECRET": SECRET}
        sent = run_cli("alerts", "test", "--channel", "webhook", cwd=tmp_path, env=env)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        [request] = hook.wait_for(1)
        assert request.json["runwatch"]["test"] is True
        assert verify(
            SECRET,
            request.headers["webhook-id"],
            int(request.headers["webhook-timestamp"]),
            request.body,
            request.headers["webhook-signature"],
        )
        hook.script((500,))
        failed = run_cli("alerts", "test", "--channel", "webhook", cwd=tmp_path, env=env)
    assert failed.returncode == 1 and "HTTP 500" in failed.stdout
    off = run_cli(
        "alerts", "test", "--channel", "slack", cwd=tmp_path, env={"SLACK_WEBHOOK_URL": ""}
    )
    assert off.returncode == 1 and "off" in off.stdout
    unknown = run_cli("alerts", "test", "--channel", "pager", cwd=tmp_path)
    assert unknown.returncode == 2 and "pager" in unknown.stderr
