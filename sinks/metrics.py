"""Prometheus metrics of the service (served with the health checks and the dashboard by
stream/web).

Counters move only from committed facts: ingest counts after the commit that wrote the
events, everything else from audit records (each derived event reaches the audit trail
exactly once, wherever it was recorded). Counters restart at zero with the process, as
Prometheus expects; gauges are set from the service's state at each tick.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from datetime import datetime
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
RESULTS: Final = {
    "succeeded": "success",
    "failed": "failure",
    "partial": "failure",
    "quarantined": "error",
    "canceled": "cancellation",
}
"""A run's terminal status as `runs_finished_total{result}`, in the values of the
OpenTelemetry CI/CD conventions (`cicd.pipeline.result`)."""
DURATION_BUCKETS: Final = (
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
    14400.0, 28800.0, 86400.0,
)  # fmt: skip
"""`run_duration_seconds` buckets; every duration SLO's threshold is added to them, so its
good-run share is exact in PromQL."""

Health = Callable[[str], tuple[bool, dict[str, Any]]]
"""`endpoint` ("healthz", "livez" or "readyz") → (healthy, JSON body)."""


class Metrics:
    """The service's metrics, in a registry of its own (tests run several services).
    `thresholds`: the duration SLOs' thresholds, in seconds, added to the duration buckets."""

    def __init__(self, thresholds: Iterable[float] = ()) -> None:
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
        self.runs_finished = Counter(
            "runs_finished",
            "Runs that ended, by result (OpenTelemetry CI/CD: success, failure, error, "
            "cancellation)",
            ["result"],
            registry=r,
        )
        self.run_duration = Histogram(
            "run_duration_seconds",
            "Duration of each run that ended, canceled runs excepted (what SLOs count)",
            registry=r,
            buckets=duration_buckets(thresholds),
        )
        self.last_success = Gauge(
            "last_successful_run_timestamp_seconds",
            "When the newest successful run ended (Unix time)",
            registry=r,
        )
        self.slo_objective = Gauge(
            "slo_objective", "The share of good runs each SLO promises", ["slo"], registry=r
        )
        self.slo_ratio = Gauge(
            "slo_ratio", "The share of good runs in a window", ["slo", "window"], registry=r
        )
        self.slo_burn_rate = Gauge(
            "slo_burn_rate",
            "How fast the error budget burns in a window (1: spent exactly over the SLO window)",
            ["slo", "window"],
            registry=r,
        )
        self.slo_budget = Gauge(
            "slo_error_budget_remaining",
            "The share of the error budget left over the SLO window (negative: overspent)",
            ["slo"],
            registry=r,
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
                if status in RESULTS:
                    self.runs_finished.labels(RESULTS[status]).inc()
                if status == "succeeded":
                    self.succeeded_at(str(record.get("event_time")))
                duration = record.get("duration_s")
                if status != "canceled" and isinstance(duration, int | float):
                    self.run_duration.observe(float(duration))
            elif kind == "EVENT_REJECTED":
                self.rejected.labels(str(record.get("reason"))).inc()
            elif kind == "ALERT_SENT":
                self.alerts_sent.labels(str(record.get("channel"))).inc()
            elif kind == "ALERT_FAILED":
                self.alerts_failed.labels(str(record.get("channel"))).inc()
            elif kind == "RUN_ARCHIVED" and record.get("created"):
                self.archived.inc()
                self.archive_size.observe(float(record.get("size_bytes") or 0))

    def succeeded_at(self, ended_at: str | None) -> None:
        """A run succeeded at `ended_at` (ISO-8601): the newest success so far moves on."""
        if ended_at:
            when = datetime.fromisoformat(ended_at).timestamp()
            if when > self.last_success._value.get():  # prometheus_client: no public getter
                self.last_success.set(when)

    def set_slos(self, figures: Iterable[dict[str, Any]]) -> None:
        """Every SLO's gauges from its figures (`projections.slo.evaluate`); a window without
        runs has no sample rather than a made-up value."""
        for slo in figures:
            name = slo["name"]
            self.slo_objective.labels(name).set(slo["objective"])
            _set_or_drop(self.slo_budget, (name,), slo["budget_remaining"])
            _set_or_drop(self.slo_ratio, (name, window_name(slo["window_s"])), slo["ratio"])
            for window, rate in slo["burn_rates"].items():
                _set_or_drop(self.slo_burn_rate, (name, window), rate)
                ratio = None if rate is None else round(1.0 - rate * (1.0 - slo["objective"]), 10)
                _set_or_drop(self.slo_ratio, (name, window), ratio)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def duration_buckets(thresholds: Iterable[float]) -> tuple[float, ...]:
    return tuple(sorted({*DURATION_BUCKETS, *(float(t) for t in thresholds), math.inf}))


def window_name(seconds: float) -> str:
    """3600 → "1h", 2592000 → "30d": the `window` label of an SLO's own window."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _set_or_drop(gauge: Gauge, labels: tuple[str, ...], value: float | None) -> None:
    if value is not None:
        gauge.labels(*labels).set(value)
    elif labels in gauge._metrics:  # prometheus_client has no public "has these labels"
        gauge.remove(*labels)
