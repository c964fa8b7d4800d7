"""`runwatch analyze`: offline statistics over JSONL logs or a projection database
(the library is `runwatch.stream.analysis.analyze`)."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from runwatch.sinks.analysis import FORMATS, render
from runwatch.sinks.atomic import write_atomically
from runwatch.stream.analysis.observe import Window, parse_moment
from runwatch.stream.cli.common import (
    Command,
    common_options,
    fold_options,
    paths_argument,
    say,
    settings_from_args,
)
from runwatch.stream.errors import EXIT_FAILURE, EXIT_OK, UsageError
from runwatch.stream.sources.discovery import expand


def add_arguments(parser: argparse.ArgumentParser) -> None:
    paths_argument(parser, "log files, directories or globs (default: analyse the database)")
    common_options(parser)
    parser.add_argument(
        "--since",
        metavar="TIME",
        help="from this time on: ISO-8601, a date, or a duration back from "
        "now such as 12h or 7d (inclusive)",
    )
    parser.add_argument(
        "--until",
        metavar="TIME",
        help="before this time: ISO-8601, a date (its end), or a duration "
        "back from now (exclusive)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="table (default, for a terminal), json, csv or html (one "
        "self-contained page with charts)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="write the result to FILE (atomically) instead of stdout",
    )
    parser.add_argument(
        "--top",
        type=int,
        default=10,
        metavar="N",
        help="rows in each top list (default: %(default)s)",
    )
    fold_options(parser)


def run(args: argparse.Namespace) -> int:
    """0 ok, 1 the result could not be written, 2 bad usage."""
    from runwatch.stream.analysis.analyze import analyze_database, analyze_logs

    settings = settings_from_args(args)
    window = window_from_args(args.since, args.until, datetime.now(UTC))
    if args.top < 1 or (args.workers is not None and args.workers < 0):
        raise UsageError("analyze: --top must be 1 or more and --workers 0 or more")
    if args.paths and args.db is not None:
        raise UsageError("analyze: give PATHs (analyse the logs) or --db (a database), not both")
    if args.paths:
        files = expand(args.paths)
        if not files:
            raise UsageError(f"analyze: no *.jsonl files in {' '.join(args.paths)}")
        analysis = analyze_logs(
            files, settings, window, top=args.top, workers=args.workers, progress=args.progress
        )
    else:
        analysis = analyze_database(settings, window, top=args.top)
    data = render(analysis, args.format)
    if args.out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return EXIT_OK
    try:
        write_atomically(args.out, data)
    except OSError as exc:
        say(f"runwatch: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def window_from_args(since: str | None, until: str | None, now: datetime) -> Window:
    """--since/--until as a window; an empty window is a usage error."""
    window = Window(
        None if since is None else parse_moment(since, "--since", now),
        None if until is None else parse_moment(until, "--until", now, end_of_day=True),
    )
    if window.lo >= window.hi:
        raise UsageError("analyze: --since must be before --until")
    return window


COMMAND = Command(
    name="analyze",
    help="offline statistics over JSONL logs or a projection database",
    description="Analyse JSONL logs (files, directories searched recursively for *.jsonl, "
    "or globs: folded exactly as `runwatch replay` does, into a scratch "
    "database) or, without PATH, an existing database: runs by status per "
    "day, success rate, duration percentiles per workstream, phase, pattern "
    "and tool, slowest tasks, top failures with their most common error "
    "messages, stall incidents, events per hour, dead letters, duplicates and "
    "clock skew.",
    add_arguments=add_arguments,
    run=run,
)
