"""`runwatch report RUN`: write a run's reports now, as the completion job would."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from runwatch.projections.events import format_time
from runwatch.sinks.audit import AuditLog
from runwatch.sinks.store import outbox
from runwatch.stream.cli.common import Command, common_options, say, settings_from_args
from runwatch.stream.delivery import jobs
from runwatch.stream.delivery.dispatcher import Result
from runwatch.stream.errors import EXIT_FAILURE, EXIT_OK, ServiceError
from runwatch.stream.services.lock import DatabaseLock
from runwatch.stream.settings.database import open_existing
from runwatch.stream.settings.service import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="the run id")
    common_options(parser)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    return run_job_now(settings, args.run, lambda db: jobs.report(db, settings, args.run))


def run_job_now(settings: Settings, run_id: str, job: Callable[[Any], Result]) -> int:
    """Run a job now and record it like the dispatcher would (the alert rules see its
    derived events at the service's next commit). The trail is appended here only when no
    service holds the database; otherwise the service appends these records itself."""
    store = open_existing(settings)
    lock = DatabaseLock(settings.database)
    try:
        lock.acquire()
        audit: AuditLog | None = AuditLog(settings.logs_dir / "monitor.jsonl", store)
    except ServiceError:
        audit = None
    try:
        result = job(store.db)
        with store.transaction():
            recorded_at = format_time(time.time_ns() // 1000) or ""
            outbox.record(store.db, result.derived, result.writes, recorded_at)
        if audit is not None:
            audit.drain()
    finally:
        lock.release()
        store.close()
    for event in result.derived:
        say(" ".join(f"{k}={v}" for k, v in event.items() if v not in (None, [], "")))
    if result.status != "delivered":
        say(f"runwatch: {run_id}: {result.detail}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


COMMAND = Command(
    name="report",
    help="write a run's reports",
    description="Write reports/<run>_summary.json, _metrics.json and <run>.html for a run, "
    "and refresh reports/index.html. Idempotent.",
    add_arguments=add_arguments,
    run=run,
)
