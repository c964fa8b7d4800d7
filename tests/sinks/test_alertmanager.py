"""The Alertmanager channel against the real Alertmanager (Debian's prometheus-alertmanager),
started on a free loopback port with a real webhook receiver behind it: what runwatch posts
shows in its API, is routed to the receiver, stays alive by re-sends and resolves."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from alertmanager import Alertmanager

from helpers import notification, wait_until
from receivers import WebhookReceiver
from runwatch.sinks.channels import AlertmanagerConfig


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Alertmanager, WebhookReceiver]]:
    with WebhookReceiver() as receiver:
        manager = Alertmanager(tmp_path_factory.mktemp("am"), receiver)
        try:
            yield manager, receiver
        finally:
            manager.stop()


def slo_burn(
    level: str, state: str = "firing", slo: str = "checkout", **changes: Any
) -> dict[str, Any]:
    severity = {"page": "critical", "ticket": "warning"}[level]
    return notification(
        rule="slo_burn",
        state=state,
        severity=severity,
        group_key=f"slo={slo}",
        labels={"alertname": "slo_burn", "severity": severity, "slo": slo},
        run_id=None,
        summary=f"SLO {slo} burning its error budget: {level}",
        runbook_url="https://runbooks.example/runwatch#slo-burn",
        **{"starts_at": "2026-12-07T05:00:00.000000Z", **changes},
    )


def routed(receiver: WebhookReceiver, status: str, **labels: str) -> list[dict[str, Any]]:
    return [
        alert
        for request in receiver.requests
        for alert in (request.json or {}).get("alerts", [])
        if alert["status"] == status and labels.items() <= alert["labels"].items()
    ]


def test_an_alert_shows_in_alertmanager_is_routed_and_resolves(
    stack: tuple[Alertmanager, WebhookReceiver],
) -> None:
    """A team that runs Alertmanager sees runwatch's alert with its labels and runbook, gets
    it through its own routes, and sees it resolved when runwatch resolves it."""
    manager, receiver = stack
    channel = AlertmanagerConfig(url=manager.url).build("alertmanager")
    outcome = channel.send(slo_burn("page"))
    assert outcome.status == "delivered", outcome
    (alert,) = manager.alerts(slo="checkout")
    assert alert["labels"] == {"alertname": "slo_burn", "severity": "critical", "slo": "checkout"}
    assert alert["annotations"]["runbook_url"] == "https://runbooks.example/runwatch#slo-burn"
    assert alert["annotations"]["summary"].startswith("SLO checkout burning")
    assert alert["status"]["state"] == "active"
    wait_until(lambda: routed(receiver, "firing", slo="checkout"), "routed to the receiver", 15)

    resolved = slo_burn("page", "resolved", ends_at="2026-12-07T05:30:00.000000Z")
    assert channel.send(resolved).status == "delivered"
    wait_until(lambda: not manager.alerts(slo="checkout"), "resolved in Alertmanager", 10)
    wait_until(lambda: routed(receiver, "resolved", slo="checkout"), "resolution routed", 15)
    assert channel.active == {}
    channel.close()


def test_a_firing_alert_is_re_sent_and_a_raised_severity_ends_the_old_one(
    stack: tuple[Alertmanager, WebhookReceiver],
) -> None:
    """Alertmanager forgets an alert nobody re-posts (resolve_timeout): runwatch re-posts it
    every resend_interval; a ticket raised to a page is one alert, not a stale warning
    left beside the critical one."""
    manager, _ = stack
    channel = AlertmanagerConfig(url=manager.url, resend_interval=1).build("alertmanager")
    ticket = slo_burn("ticket", slo="search")
    assert channel.send(ticket).status == "delivered"
    (first,) = manager.alerts(slo="search")
    assert first["labels"]["severity"] == "warning"

    def re_sent() -> bool:
        channel.when_idle()
        return manager.alerts(slo="search")[0]["updatedAt"] != first["updatedAt"]

    wait_until(re_sent, "the firing alert re-posted after resend_interval", 10)

    page = slo_burn("page", slo="search")
    assert channel.send(page).status == "delivered"
    wait_until(
        lambda: [a["labels"]["severity"] for a in manager.alerts(slo="search")] == ["critical"],
        "only the critical alert left active",
        10,
    )
    channel.close()


def test_a_refused_post_names_alertmanagers_reason(
    stack: tuple[Alertmanager, WebhookReceiver],
) -> None:
    """A bad alert is not retried forever: Alertmanager's 400 fails the delivery with its
    reason, so the operator sees what to fix."""
    manager, _ = stack
    channel = AlertmanagerConfig(url=manager.url).build("alertmanager")
    outcome = channel.send(slo_burn("page", starts_at="not a time"))
    assert outcome.status == "failed"
    assert outcome.detail.startswith("HTTP 400") and len(outcome.detail) > len("HTTP 400")
    channel.close()
