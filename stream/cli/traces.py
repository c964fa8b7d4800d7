"""`runwatch traces export`: send finished runs to an OTLP/HTTP endpoint as traces, from a
database (a backfill of history, or a re-send: the ids are the same every time)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runwatch.projections import RUN_TERMINAL, format_time
from runwatch.sinks.channels.base import origin
from runwatch.sinks.store.trace_reads import finished_runs
from runwatch.sinks.traces import OtlpTarget
from runwatch.stream.analysis.observe import parse_moment
from runwatch.stream.cli.common import (
    Command,
    common_options,
    json_option,
    print_json,
    say,
    settings_from_args,
)
from runwatch.stream.console import Progress
from runwatch.stream.delivery.traces import send_in_chunks
from runwatch.stream.errors import EXIT_FAILURE, EXIT_OK, UsageError
from runwatch.stream.settings.database import open_existing
from runwatch.stream.settings.traces import otlp_target


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs",
        nargs="*",
        metavar="RUN",
        help="run ids to export (default: every finished run, or those ended since --since)",
    )
    parser.add_argument(
        "--since",
        metavar="T",
        help="runs that ended at or after T: an ISO-8601 time, a date (2026-01-05) or a "
        "duration back from now (90m, 12h, 7d)",
    )
    parser.add_argument(
        "--endpoint",
        metavar="URL",
        help="the OTLP/HTTP traces URL, e.g. http://127.0.0.1:4318/v1/traces (default: the "
        "config's traces.endpoint, else OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else "
        "OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces)",
    )
    common_options(parser)
    json_option(parser, "print the summary as JSON")
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes that read the runs' events, build their traces and send them "
        "(default: one per core, at most 4; 0: all in this process)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draw a progress bar (default: when stderr is a terminal)",
    )


@dataclass
class Summary:
    """What an export sent; `as_dict` is the `--json` output."""

    endpoint: str
    selected: int = 0
    exported: int = 0
    spans: int = 0
    requests: int = 0
    not_sent: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.not_sent or self.unknown or self.unfinished)

    def as_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "runs_selected": self.selected,
            "runs_exported": self.exported,
            "spans": self.spans,
            "requests": self.requests,
            "runs_not_sent": len(self.not_sent),
            "runs_unknown": self.unknown,
            "runs_unfinished": self.unfinished,
            "error": self.error,
            "seconds": round(self.seconds, 3),
            "runs_per_s": round(self.exported / self.seconds, 1) if self.seconds > 0 else 0.0,
        }


class RunProgress(Progress):
    """The progress bar counted in runs."""

    def _draw(self, events: int, now: float) -> None:
        share = min(self.done / self.total, 1.0)
        filled = int(share * 30)
        rate = self.done / max(now - self.started, 1e-9)
        self.stream.write(
            f"\r{self.label} {share:6.1%} |{'█' * filled}{' ' * (30 - filled)}| "
            f"{self.done:,}/{self.total:,} runs {rate:,.0f} runs/s "
        )
        self.stream.flush()


def run_export(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    target = otlp_target(settings, endpoint=args.endpoint)
    if target is None:
        raise UsageError(
            "traces export: no endpoint: give --endpoint URL, set traces.endpoint in the "
            "config, or export OTEL_EXPORTER_OTLP_ENDPOINT"
        )
    if args.runs and args.since:
        raise UsageError("traces export: give RUNs or --since, not both")
    since = None
    if args.since is not None:
        moment = parse_moment(args.since, "--since", datetime.now(UTC), command="traces export")
        since = format_time(moment)
    if args.workers is not None and args.workers < 0:
        raise UsageError("traces export: --workers must be 0 or more")
    workers = min(os.cpu_count() or 1, 4) if args.workers is None else args.workers
    store = open_existing(settings)
    try:
        runs = args.runs or finished_runs(store.db, RUN_TERMINAL, since=since)
    finally:
        store.close()
    database = settings.database_url or settings.database
    summary = export_runs(database, runs, target, workers=workers, progress=args.progress)
    if args.json:
        print_json(summary.as_dict())
    else:
        _say_summary(summary)
    return EXIT_OK if summary.ok else EXIT_FAILURE


def export_runs(
    database: Path | str,
    run_ids: list[str],
    target: OtlpTarget,
    *,
    workers: int = 0,
    progress: bool | None = None,
) -> Summary:
    """Export the runs' traces; stop at the first request that fails (the rest would fail
    alike; the same command sends them again, with the same ids)."""
    summary = Summary(origin(target.endpoint), selected=len(run_ids))
    bar = RunProgress(len(run_ids), "traces", enabled=progress)
    started = time.perf_counter()
    sent = 0
    try:
        for done in send_in_chunks(database, target, run_ids, workers):
            sent += done.runs
            summary.exported += done.exported
            summary.spans += done.spans
            summary.requests += done.requests
            summary.unknown += done.unknown
            summary.unfinished += done.unfinished
            if done.error is not None:
                summary.error = done.error
                summary.not_sent = done.not_sent + run_ids[sent:]
                break
            bar.advance(done.runs, 0)
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _say_summary(summary: Summary) -> None:
    data = summary.as_dict()
    say(
        f"exported {data['runs_exported']:,} of {data['runs_selected']:,} run(s) as traces "
        f"({data['spans']:,} spans in {data['requests']:,} request(s)) to {data['endpoint']} "
        f"in {data['seconds']:.2f} s ({data['runs_per_s']:,} runs/s)"
    )
    for run_id in summary.unknown:
        say(f"runwatch: traces export: {run_id}: no such run in the database", file=sys.stderr)
    for run_id in summary.unfinished:
        say(f"runwatch: traces export: {run_id}: not finished, no trace", file=sys.stderr)
    if summary.not_sent:
        say(
            f"runwatch: traces export: {len(summary.not_sent):,} run(s) not sent: "
            f"{summary.error}; run the command again (the ids do not change)",
            file=sys.stderr,
        )


EXPORT = Command(
    name="export",
    help="send finished runs to an OTLP/HTTP endpoint as traces",
    description="Export finished runs from the database as OpenTelemetry traces over "
    "OTLP/HTTP (CI/CD semantic conventions): every finished run, the RUNs given, or those "
    "that ended since --since. Trace and span ids derive from the run, so a re-export sends "
    "the same ids. Exit 1 if a run is unknown, unfinished or could not be sent.",
    add_arguments=add_export_arguments,
    run=run_export,
)

COMMAND = Command(
    name="traces",
    help="export runs as OpenTelemetry traces",
    description="Runs as OpenTelemetry traces (see README, section Traces).",
    subcommands=(EXPORT,),
)
