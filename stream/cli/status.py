"""`runwatch status`: the runs in the projection database, one run in detail, or a live view."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from runwatch.sinks.store import Store, reads
from runwatch.sinks.terminal import terminal_safe
from runwatch.stream.cli.common import (
    Command,
    common_options,
    json_option,
    print_json,
    say,
    settings_from_args,
)
from runwatch.stream.console import table
from runwatch.stream.errors import EXIT_FAILURE, EXIT_OK, UsageError
from runwatch.stream.settings.database import open_existing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common_options(parser)
    parser.add_argument(
        "--run",
        metavar="ID",
        help="show one run with its tasks, workstreams, pattern runs, archives and the "
        "events that arrived after its archive was written",
    )
    parser.add_argument(
        "--status",
        dest="only",
        metavar="STATUS",
        help="only runs with this status (e.g. failed, running)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        help="at most this many runs (default: 50 in the table, all with --json)",
    )
    json_option(parser, "print a JSON list of run objects with the runs columns")
    parser.add_argument(
        "--watch",
        action="store_true",
        help="refresh in place until q or Ctrl-C: active runs with progress, "
        "stalls, recent completions and alerts, ingest lag",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="with --watch: seconds between refreshes (default 1)",
    )


def run(args: argparse.Namespace) -> int:
    if args.watch:
        if args.run or args.only or args.json:
            raise UsageError("status: --watch cannot be combined with --run, --status or --json")
        from runwatch.stream.cli.live import watch

        return watch(settings_from_args(args), interval=args.interval)
    store = open_existing(settings_from_args(args))
    try:
        if args.run:
            return _status_one(store, args.run, args.json)
        limit = args.limit if args.limit is not None else (None if args.json else 50)
        runs = reads.runs(store.db, status=args.only, limit=limit)
        counts = reads.status_counts(store.db)
    finally:
        store.close()
    if args.json:
        for run in runs:
            run["stalled"] = bool(run["stalled"])
        print_json(runs)
        return EXIT_OK
    if not runs:
        print("no runs" + (f" with status {args.only}" if args.only else ""))
        return EXIT_OK
    rows = [
        [
            r["run_id"],
            r["status"] + (" (stalled)" if r["stalled"] else ""),
            f"{r['tasks_succeeded']}/{r['tasks_total']}",
            r["tasks_failed"],
            r["events_total"],
            r["error_events"],
            r["duration_s"],
            r["last_event_at"],
        ]
        for r in runs
    ]
    print(
        table(
            ["RUN", "STATUS", "DONE", "FAILED", "EVENTS", "ERRORS", "DURATION_S", "LAST_EVENT"],
            rows,
        )
    )
    print("\n" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return EXIT_OK


def _status_one(store: Store, run_id: str, as_json: bool) -> int:
    found = reads.run_detail(store.db, run_id)
    if found is None:
        say(f"runwatch: no run {run_id!r} in {store.path}", file=sys.stderr)
        return EXIT_FAILURE
    run: dict[str, Any] = found.pop("run")
    run["stalled"] = bool(run["stalled"])
    detail = {**found, **reads.archival(store.db, run_id)}
    if as_json:
        print_json({**run, **detail})
        return EXIT_OK
    width = max(len(k) for k in run)
    print(
        "\n".join(
            f"{k.ljust(width)}  {'-' if v is None else terminal_safe(str(v))}"
            for k, v in run.items()
        )
    )
    for name, rows in detail.items():
        if rows:
            print(f"\n{name}:")
            columns = [c for c in rows[0] if c != "run_id"]
            print(table(columns, [[r[c] for c in columns] for r in rows]))
    return EXIT_OK


COMMAND = Command(
    name="status",
    help="show runs from the projection database",
    description="Show the runs in the projection database, newest first.",
    add_arguments=add_arguments,
    run=run,
)
