"""`runwatch replay`: rebuild the projection from JSONL files, optionally delivering after."""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson

from runwatch.stream.cli.common import (
    Command,
    common_options,
    input_patterns,
    settings_from_args,
)
from runwatch.stream.errors import EXIT_OK, UsageError
from runwatch.stream.services.lock import DatabaseLock
from runwatch.stream.settings.alerts import load_alerts
from runwatch.stream.sources.discovery import expand


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="files, directories or globs (default: the config's sources)",
    )
    common_options(parser)
    parser.add_argument(
        "--stall-after", metavar="SECONDS", help="override stall_after (e.g. 1800, 30m)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes that decode and fold large inputs "
        "(default: one per core, at most 4; 0: all in this process)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--alerts",
        type=Path,
        metavar="FILE",
        help="alert rules (default: config/alerts.yaml if present, else the "
        "built-in rules); decisions are recorded, not delivered",
    )
    parser.add_argument(
        "--deliver",
        action="store_true",
        help="also deliver the recorded alerts and run the completion jobs "
        "(reports, archives), then wait until the outbox is empty",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draw a progress bar (default: when stderr is a terminal)",
    )


def run(args: argparse.Namespace) -> int:
    from runwatch.stream.services.replay import deliver_outbox, replay

    settings = settings_from_args(args)
    patterns = input_patterns(args, settings, "replay")
    files = expand(patterns)
    if not files:
        raise UsageError(f"replay: no files match {' '.join(patterns)}")
    if args.workers is not None and args.workers < 0:
        raise UsageError("replay: --workers must be 0 or more")
    if settings.database_url is not None and args.deliver:
        raise UsageError(
            "replay --deliver: carrying out the outbox needs a SQLite --db; into "
            "PostgreSQL the processors deliver it"
        )
    lock = DatabaseLock(settings.database)
    if settings.database_url is None:  # PostgreSQL's swap takes the schema's writer lock
        lock.acquire()
    try:
        alerts = load_alerts(args.alerts, required=args.alerts is not None)
        summary = replay(
            files,
            settings.database_url or settings.database,
            settings,
            progress=args.progress,
            workers=args.workers,
            alerts=alerts,
            deliver=args.deliver,
        )
        if args.deliver:
            deliver_outbox(settings, alerts, quiet=args.json)
    finally:
        lock.release()
    if args.json:
        print(orjson.dumps(summary.as_dict(), option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    data = summary.as_dict()
    rejected = ", ".join(f"{k} {v:,}" for k, v in data["rejected_by_reason"].items())
    runs = ", ".join(f"{k} {v:,}" for k, v in data["runs_by_status"].items()) or "none"
    print(
        f"replayed {data['files']} file(s), {data['lines']:,} lines "
        f"({data['bytes'] / 1e6:,.1f} MB) in {data['seconds']:.2f} s: "
        f"{data['events_per_s']:,} events/s"
    )
    print(
        f"  events    accepted {data['events_accepted']:,}, duplicate "
        f"{data['events_duplicate']:,}, rejected {data['events_rejected']:,}"
        + (f" ({rejected})" if rejected else "")
    )
    print(
        f"  runs      {sum(data['runs_by_status'].values()):,}: {runs}; "
        f"stalled {data['stalled_runs']:,}"
    )
    print(f"  patterns  {data['pattern_runs']:,} pattern runs")
    print(f"  database  {data['database']}")
    return EXIT_OK


COMMAND = Command(
    name="replay",
    help="rebuild the projection database from JSONL files",
    description="Rebuild the projection from JSONL files, directories (searched "
    "recursively for *.jsonl) or globs, into a fresh database that replaces "
    "--db only when complete. Delivers nothing outward.",
    add_arguments=add_arguments,
    run=run,
)
