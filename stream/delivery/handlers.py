"""The dispatcher's targets: one handler per enabled channel, and the completion jobs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TextIO

from runwatch.sinks.channels import Channel, ChannelConfig
from runwatch.sinks.store import connect, reads
from runwatch.sinks.traces import OtlpTarget
from runwatch.stream.delivery import jobs
from runwatch.stream.delivery.dispatcher import Handler, Result
from runwatch.stream.delivery.traces import trace_handler
from runwatch.stream.settings.alerts import AlertSetup
from runwatch.stream.settings.service import Settings


def build_channel(
    name: str,
    config: ChannelConfig,
    *,
    out: TextIO | None = None,
    lock: threading.Lock | None = None,
) -> Channel:
    return config.build(name, stream=out, lock=lock)


def resume(channel: Channel, settings: Settings) -> None:
    """A channel that keeps firing alerts alive (Alertmanager) takes up those still firing
    from before a restart."""
    seed = getattr(channel, "seed", None)
    if seed is None:
        return
    connection = connect(settings.database_url or settings.database)
    try:
        seed(reads.still_firing(connection, channel.name))
    finally:
        connection.close()


def channel_handler(channel: Channel) -> Handler:
    def send(payload: dict[str, Any]) -> Result:
        outcome = channel.send(payload)
        return Result(outcome.status, outcome.detail, outcome.retry_after)

    send.longest_attempt_s = longest_attempt(channel)  # type: ignore[attr-defined]  # the lease
    when_idle = getattr(channel, "when_idle", None)
    if when_idle is not None:  # periodic work of the channel (Alertmanager's re-sends)
        send.when_idle = when_idle  # type: ignore[attr-defined]  # read by the dispatcher
    return send


def longest_attempt(channel: Channel) -> float:
    """How long one `send` can block: each network step (connect, TLS, request, reply; for
    mail every SMTP command and every recipient) may take the channel's whole timeout."""
    config = getattr(channel, "config", None)
    timeout = float(getattr(config, "timeout", 0.0))
    steps = 10 + len(getattr(config, "recipients", ())) if channel.kind == "email" else 3
    return timeout * steps + float(getattr(config, "min_interval", 0.0))


def job_handler(settings: Settings, run: Callable[..., Result], **options: Any) -> Handler:
    """A job reads the committed projection through its own connection."""

    def execute(payload: dict[str, Any]) -> Result:
        connection = connect(settings.database_url or settings.database)
        try:
            return run(connection, settings, payload["run_id"], **options)
        finally:
            connection.close()

    return execute


def report_handler(settings: Settings, fetch: jobs.Fetch | None) -> Handler:
    """Reports, with index.html rebuilt at a bounded rate and once more when idle."""
    index = jobs.RunIndex()
    execute = job_handler(settings, jobs.report, fetch=fetch, index=index)

    def when_idle() -> None:
        if index.dirty:
            connection = connect(settings.database_url or settings.database)
            try:
                index.refresh(connection, settings, force=True)
            except OSError:
                pass  # the next report retries it
            finally:
                connection.close()

    execute.when_idle = when_idle  # type: ignore[attr-defined]  # read by the dispatcher
    return execute


def build_handlers(
    alerts: AlertSetup,
    settings: Settings,
    *,
    out: TextIO | None = None,
    lock: threading.Lock | None = None,
    with_jobs: bool = True,
    fetch: jobs.Fetch | None = None,
    traces: OtlpTarget | None = None,
) -> dict[str, Handler]:
    handlers = {}
    for name, config in alerts.channels.items():
        if config is not None:
            channel = build_channel(name, config, out=out, lock=lock)
            resume(channel, settings)
            handlers[name] = channel_handler(channel)
    if with_jobs:
        handlers["report"] = report_handler(settings, fetch)
        handlers["archive"] = job_handler(settings, jobs.archive, fetch=fetch, finished_only=True)
        if traces is not None:
            handlers["trace"] = trace_handler(settings, traces, fetch)
    return handlers
