"""The trace job: a finished run exported as an OpenTelemetry trace, once, through the outbox.

Like the report and archive jobs it reads the committed rows and the run's own events through
the event index, and it is idempotent towards backends: a retry sends the same trace and span
ids (see `projections.traces`). TRACE_EXPORTED or TRACE_FAILED records each attempt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runwatch.projections import RUN_TERMINAL
from runwatch.projections.traces import Trace, run_trace
from runwatch.sinks.store import Connection, connect
from runwatch.sinks.traces import OtlpTarget
from runwatch.stream.delivery.dispatcher import Handler, Result
from runwatch.stream.delivery.jobs import Fetch, RunData, derived_event, load_run
from runwatch.stream.settings.service import Settings

if TYPE_CHECKING:
    from runwatch.sinks.otlp import TraceExporter  # the SDK loads slowly: only when used


def trace_of(data: RunData) -> Trace:
    return run_trace(
        data.run, data.tasks, data.workstreams, data.pattern_runs, data.events, missing=data.missing
    )


def export_trace(
    connection: Connection,
    run_id: str,
    exporter: TraceExporter,
    *,
    fetch: Fetch | None = None,
) -> Result:
    """Export the run's trace if it is finished; a run that is not gets none (a later
    completion decides a new job)."""
    data = load_run(connection, run_id, fetch)
    if data is None:
        return Result("failed", f"no run {run_id!r} in the database")
    if data.run["status"] not in RUN_TERMINAL:
        return Result("delivered", f"run {run_id!r} is {data.run['status']}: no trace")
    trace = trace_of(data)
    sent = exporter.export([trace])
    about: dict[str, Any] = {
        "trace_id": f"{trace.trace_id:032x}",
        "spans": sent.spans,
        "endpoint": exporter.target.describe().partition(" ")[0],
        "events_missing": data.missing,
    }
    if sent.status == "delivered":
        return Result(
            "delivered",
            f"trace {about['trace_id']}: {sent.detail}",
            derived=[derived_event("TRACE_EXPORTED", run_id, about)],
        )
    return Result(
        sent.status,
        sent.detail,
        sent.retry_after,
        derived=[derived_event("TRACE_FAILED", run_id, {**about, "error": sent.detail})],
    )


def trace_handler(settings: Settings, target: OtlpTarget, fetch: Fetch | None) -> Handler:
    """One exporter (one kept-alive session) for every trace job of the service."""
    from runwatch.sinks.otlp import TraceExporter

    exporter = TraceExporter(target)

    def execute(payload: dict[str, Any]) -> Result:
        connection = connect(settings.database_url or settings.database)
        try:
            return export_trace(connection, payload["run_id"], exporter, fetch=fetch)
        finally:
            connection.close()

    # The lease: a giant run takes several requests, each up to the timeout.
    execute.longest_attempt_s = 4 * target.timeout_s  # type: ignore[attr-defined]
    return execute
