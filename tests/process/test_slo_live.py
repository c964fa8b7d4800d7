"""SLOs in the live service: a real `runwatch tail` judges them on the wall clock, pages
through the real Alertmanager, exports the slo_* metrics, and a `kill -9` restart does not
announce the same burn twice."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import orjson
import requests
from alertmanager import Alertmanager

from helpers import TailProcess, derived_events, wait_until
from receivers import WebhookReceiver

ROOT = Path(__file__).parents[2]
CONFIG = """\
tick_interval: 0.2s
slos:
  - {name: checkout, sli: success, objective: 0.9, min_events: 5}
  - {name: checkout_fast, sli: duration, objective: 0.9, threshold: 45s, min_events: 5}
"""


def failed_run(run_id: str) -> bytes:
    now = datetime.now(UTC).isoformat()
    return b"".join(
        orjson.dumps({"event_id": f"{run_id}-{kind}", "event_type": kind, "run_id": run_id,
                      "timestamp": now}) + b"\n"
        for kind in ("run_started", "run_failed")
    )  # fmt: skip


def metrics_url(service: TailProcess) -> str:
    """The /metrics URL of the service's latest start."""
    pattern = r"metrics and health on (http://[0-9.]+:\d+)"
    service.wait_until(lambda: len(re.findall(pattern, service.output())) == service.starts)
    return re.findall(pattern, service.output())[-1] + "/metrics"


def sample(text: str, series: str) -> float | None:
    found = re.search(re.escape(series) + r" ([0-9.e+-]+)$", text, re.MULTILINE)
    return None if found is None else float(found.group(1))


def slo_burns(db: Path) -> list[dict[str, object]]:
    return [e for e in derived_events(db) if e["type"] == "SLO_BURN"]


def test_a_live_burn_pages_through_alertmanager_once(tmp_path: Path) -> None:
    """Failures that burn the budget 10× page (the 6h/30m pair) within a tick, land in the
    team's Alertmanager with the SLO's labels, show in /metrics, and a crashed and restarted
    service knows it already announced the page and keeps it alive in Alertmanager."""
    logs = tmp_path / "in"
    logs.mkdir()
    config = tmp_path / "runwatch.yaml"
    config.write_text(CONFIG)
    db = tmp_path / "rw.db"
    alerts = tmp_path / "alerts.yaml"
    shipped = (ROOT / "config" / "alerts.yaml").read_text()
    alerts.write_text(shipped.replace("resend_interval: 1m", "resend_interval: 1s"))
    with WebhookReceiver() as receiver:
        manager = Alertmanager(tmp_path, receiver)
        try:
            args = ("--config", config, "--alerts", alerts, "--metrics-addr", "127.0.0.1:0")
            env = {"ALERTMANAGER_URL": manager.url}
            service = TailProcess(tmp_path, db, logs, args=tuple(map(str, args)), env=env)
            with service:
                url = metrics_url(service)
                (logs / "events.jsonl").write_bytes(b"".join(failed_run(f"R{i}") for i in range(6)))
                service.wait_until(lambda: bool(manager.alerts(alertname="slo_burn")), 30)
                (alert,) = manager.alerts(alertname="slo_burn")
                assert alert["labels"] == {
                    "alertname": "slo_burn",
                    "severity": "critical",
                    "slo": "checkout",
                }
                assert alert["annotations"]["runbook_url"].endswith("#slo-burn")
                (burn,) = slo_burns(db)
                assert burn["level"] == "page" and burn["slo"] == "checkout"
                text = requests.get(url, timeout=5).text
                assert sample(text, 'slo_burn_rate{slo="checkout",window="30m"}') == 10.0
                assert sample(text, 'slo_error_budget_remaining{slo="checkout"}') == -9.0
                assert sample(text, 'slo_objective{slo="checkout"}') == 0.9
                assert sample(text, 'runs_finished_total{result="failure"}') == 6.0
                assert sample(text, 'run_duration_seconds_bucket{le="45.0"}') == 6.0
                assert sample(text, 'slo_burn_rate{slo="checkout_fast",window="5m"}') == 0.0

                service.kill()
                service.start()
                url = metrics_url(service)
                wait_until(
                    lambda: (
                        sample(requests.get(url, timeout=5).text, 'slo_objective{slo="checkout"}')
                        == 0.9
                    ),
                    "the restarted service judged its SLOs",
                    30,
                )
                assert len(slo_burns(db)) == 1, "the page was announced before the crash"
                before = manager.alerts(alertname="slo_burn")[0]["updatedAt"]
                wait_until(
                    lambda: manager.alerts(alertname="slo_burn")[0]["updatedAt"] != before,
                    "the restarted service re-posts the alert still firing",
                    15,
                )
                assert service.stop() == 0
        finally:
            manager.stop()
