"""Runs out as OpenTelemetry traces: the trace completion job (a finished run, once, through
the outbox) and the bulk export behind `runwatch traces export`.

Like the report and archive jobs both read the committed rows and the run's own events through
the event index, and both are idempotent towards backends: a retry or a re-export sends the
same trace and span ids (see `projections.traces`). TRACE_EXPORTED or TRACE_FAILED records
each attempt of the job; the bulk export records nothing (its summary says what it sent).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from runwatch.projections import RUN_TERMINAL
from runwatch.projections.traces import Trace, run_trace
from runwatch.sinks.store import Connection, connect
from runwatch.sinks.traces import OtlpTarget
from runwatch.stream.delivery.dispatcher import Handler, Result
from runwatch.stream.delivery.jobs import Fetch, RunData, derived_event, load_run
from runwatch.stream.settings.service import Settings

if TYPE_CHECKING:
    from runwatch.sinks.otlp import TraceExporter  # the SDK loads slowly: only when used


CHUNK_RUNS: Final = 32
"""Runs one worker builds and sends at a time (the progress bar moves by this much)."""


@dataclass
class Sending:
    """What the export of some runs did."""

    runs: int = 0
    exported: int = 0
    spans: int = 0
    requests: int = 0
    unknown: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    not_sent: list[str] = field(default_factory=list)
    error: str | None = None


def trace_of(data: RunData) -> Trace:
    return run_trace(
        data.run, data.tasks, data.workstreams, data.pattern_runs, data.events, missing=data.missing
    )


def send_runs(connection: Connection, exporter: TraceExporter, run_ids: list[str]) -> Sending:
    """Build the runs' traces and send them, several runs a request; after a request
    fails, the rest are not sent (they would fail alike)."""
    from runwatch.sinks.otlp import MAX_SPANS_PER_REQUEST

    done = Sending(runs=len(run_ids))
    batch: list[Trace] = []
    spans = 0
    for index, run_id in enumerate(run_ids):
        data = load_run(connection, run_id)
        if data is None:
            done.unknown.append(run_id)
        elif data.run["status"] not in RUN_TERMINAL:
            done.unfinished.append(run_id)
        else:
            batch.append(trace_of(data))
            spans += len(batch[-1].spans)
        last = index == len(run_ids) - 1
        if batch and (spans >= MAX_SPANS_PER_REQUEST or last):
            sent = exporter.export(batch)
            done.requests += sent.requests
            if sent.status != "delivered":
                done.not_sent = [t.run_id for t in batch] + run_ids[index + 1 :]
                done.error = sent.detail
                return done
            done.exported += len(batch)
            done.spans += sent.spans
            batch, spans = [], 0
    return done


def send_in_chunks(
    database: Path | str, target: OtlpTarget, run_ids: list[str], workers: int
) -> Iterator[Sending]:
    """Export the runs CHUNK_RUNS at a time, by `workers` processes that each read the
    events, build the traces, encode and send them (all of it costs CPU); in this process
    when `workers` is 0 or there is one chunk. Results come in the order of `run_ids`; the
    caller stops at the first failure by closing the iterator."""
    chunks = [run_ids[i : i + CHUNK_RUNS] for i in range(0, len(run_ids), CHUNK_RUNS)]
    if workers <= 0 or len(chunks) <= 1:
        from runwatch.sinks.otlp import TraceExporter

        connection, exporter = connect(database), TraceExporter(target)
        try:
            yield from (send_runs(connection, exporter, chunk) for chunk in chunks)
        finally:
            exporter.close()
            connection.close()
        return
    context = multiprocessing.get_context("fork")
    with context.Pool(min(workers, len(chunks)), _start_worker, (database, target)) as pool:
        yield from pool.imap(_send_in_worker, chunks)


_worker: tuple[Connection, TraceExporter] | None = None


def _start_worker(database: Path | str, target: OtlpTarget) -> None:
    from runwatch.sinks.otlp import TraceExporter

    global _worker
    _worker = (connect(database), TraceExporter(target))


def _send_in_worker(run_ids: list[str]) -> Sending:
    assert _worker is not None, "the pool's initializer makes it"
    return send_runs(*_worker, run_ids)


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
