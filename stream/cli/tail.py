"""`runwatch tail`: follow event files, or a JetStream partition; keep the projection current."""

from __future__ import annotations

import argparse

from runwatch.stream.cli.common import (
    Command,
    alerts_option,
    common_options,
    input_patterns,
    paths_argument,
    poll_option,
    settings_from_args,
)
from runwatch.stream.errors import UsageError
from runwatch.stream.settings.alerts import AlertSetup, load_alerts
from runwatch.stream.settings.service import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    paths_argument(parser, "files, directories or globs to follow (default: the config's sources)")
    common_options(parser)
    poll_option(parser)
    parser.add_argument(
        "--quiet", action="store_true", help="do not print derived events on the console"
    )
    parser.add_argument(
        "--nats",
        metavar="URL",
        help="consume a partition of the JetStream event log instead of files "
        "(with --partition K/N and a postgresql:// --db)",
    )
    parser.add_argument(
        "--partition",
        metavar="K[,K]/N",
        help="with --nats: own partition K of N (0 <= K < N), or several as "
        "K,K/N; a second processor for a partition waits as a standby",
    )
    parser.add_argument(
        "--metrics-addr",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics, /healthz, /livez, /readyz and the web dashboard here "
        "(e.g. 127.0.0.1:9464; a bare :PORT binds to 127.0.0.1)",
    )
    alerts_option(parser)


def run(args: argparse.Namespace) -> int:
    from runwatch.stream.services.tail import TailService

    settings = settings_from_args(args)
    alerts = load_alerts(args.alerts, required=args.alerts is not None)
    if args.nats or args.partition:
        return _run_partition(args, settings, alerts)
    service = TailService(
        input_patterns(args, settings, "tail"),
        settings,
        poll=args.poll,
        quiet=args.quiet,
        alerts=alerts,
    )
    return service.run()


def _run_partition(args: argparse.Namespace, settings: Settings, alerts: AlertSetup) -> int:
    from runwatch.sinks.store import is_postgres
    from runwatch.stream.services.partition import PartitionService
    from runwatch.stream.sources.nats import Partitions

    if not (args.nats and args.partition):
        raise UsageError("tail: --nats and --partition K/N go together")
    if args.paths:
        raise UsageError("tail: with --nats, events come from JetStream, not from PATHs")
    if settings.database_url is None or not is_postgres(settings.database_url):
        raise UsageError(
            "tail --nats: processors share one PostgreSQL projection; give --db postgresql://…"
        )
    try:
        partitions = Partitions.parse(args.partition)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return PartitionService(args.nats, partitions, settings, alerts, quiet=args.quiet).run()


COMMAND = Command(
    name="tail",
    help="follow event files live and keep the projection current",
    description="Follow JSONL event files (paths, directories searched recursively for "
    "*.jsonl, or globs; default: the config's sources) as they grow, rotate "
    "and truncate; fold every complete line into the projection database; "
    "write derived events to logs/monitor.jsonl and the console. Stops "
    "cleanly on SIGTERM/SIGINT.",
    add_arguments=add_arguments,
    run=run,
)
