"""Prometheus metrics of the service (served with the health checks and the dashboard by
stream/web).

Counters move only from committed facts: ingest counts after the commit that wrote the
events, everything else from audit records (each derived event reaches the audit trail
exactly once, wherever it was recorded). Counters restart at zero with the process, as
Prometheus expects; gauges are set from the service's state at each tick.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

FAILED_STATUSES: Final = frozenset({"failed", "partial", "quarantined"})
"""Completions that count toward `runs_failed_total` (the default run_failure rule's set)."""

Health = Callable[[str], tuple[bool, dict[str, Any]]]
"""`endpoint` ("healthz", "livez" or "readyz") → (healthy, JSON body)."""


class Metrics:
    """The service's metrics, in a registry of its own (tests run several services)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.runs_completed = Counter(
            "runs_completed", "Runs that reached a terminal status", ["status"], registry=r
        )
        self.runs_failed = Counter(
            "runs_failed", "Runs that ended failed, partial or quarantined", registry=r
        )
        self.archived = Counter("artifacts_archived", "Run archives written", registry=r)
        self.archive_size = Histogram(
            "archive_size_bytes",
            "Size of each run archive written",
            registry=r,
            buckets=(1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10),
        )
        self.ingested = Counter(
            "events_ingested", "Input events accepted into the projection", ["source"], registry=r
        )
        self.rejected = Counter(
            "events_rejected", "Input lines dead-lettered", ["reason"], registry=r
        )
        self.lag_seconds = Gauge(
            "ingest_lag_seconds",
            "Age of the newest appended byte not yet committed (0 when caught up)",
            registry=r,
        )
        self.lag_bytes = Gauge("ingest_lag_bytes", "Appended bytes not yet committed", registry=r)
        self.active_runs = Gauge("active_runs", "Runs not yet terminal", registry=r)
        self.stalled_runs = Gauge("stalled_runs", "Active runs flagged as stalled", registry=r)
        self.alerts_sent = Counter(
            "alerts_sent", "Notifications delivered", ["channel"], registry=r
        )
        self.alerts_failed = Counter(
            "alerts_failed", "Notifications given up on", ["channel"], registry=r
        )
        self.outbox_pending = Gauge(
            "outbox_pending", "Alerts and jobs waiting for delivery", registry=r
        )

    def record(self, records: list[dict[str, Any]]) -> None:
        """Count what a batch of audit records says happened."""
        for record in records:
            kind = record.get("type")
            if kind == "RUN_COMPLETED":
                status = str(record.get("status"))
                self.runs_completed.labels(status).inc()
                if status in FAILED_STATUSES:
                    self.runs_failed.inc()
            elif kind == "EVENT_REJECTED":
                self.rejected.labels(str(record.get("reason"))).inc()
            elif kind == "ALERT_SENT":
                self.alerts_sent.labels(str(record.get("channel"))).inc()
            elif kind == "ALERT_FAILED":
                self.alerts_failed.labels(str(record.get("channel"))).inc()
            elif kind == "RUN_ARCHIVED" and record.get("created"):
                self.archived.inc()
                self.archive_size.observe(float(record.get("size_bytes") or 0))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
