"""`runwatch replay`: rebuild the projection from JSONL files, optionally delivering after."""

from __future__ import annotations

import argparse

from runwatch.stream.cli.common import (
    Command,
    alerts_option,
    common_options,
    fold_options,
    input_patterns,
    json_option,
    paths_argument,
    print_json,
    say,
    settings_from_args,
)
from runwatch.stream.errors import EXIT_OK, UsageError
from runwatch.stream.services.lock import DatabaseLock
from runwatch.stream.settings.alerts import load_alerts
from runwatch.stream.sources.discovery import expand


def add_arguments(parser: argparse.ArgumentParser) -> None:
    paths_argument(parser, "files, directories or globs (default: the config's sources)")
    common_options(parser)
    fold_options(parser)
    json_option(parser, "print the summary as JSON")
    alerts_option(parser)
    parser.add_argument(
        "--deliver",
        action="store_true",
        help="deliver the alerts and run the completion jobs (reports, archives) "
        "instead of only recording them, then wait until the outbox is empty",
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
        print_json(summary.as_dict())
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
    say(f"  database  {data['database']}")
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
