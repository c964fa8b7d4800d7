"""`runwatch health`: the service's health checks, run from a shell."""

from __future__ import annotations

import argparse

from runwatch.stream.cli.common import (
    Command,
    common_options,
    json_option,
    print_json,
    say,
    settings_from_args,
)
from runwatch.stream.errors import EXIT_FAILURE, EXIT_OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common_options(parser)
    json_option(parser, "print the checks as JSON")


def run(args: argparse.Namespace) -> int:
    from runwatch.stream.services.health import from_status_file, report

    checks = from_status_file(settings_from_args(args))
    if args.json:
        print_json(report(checks))
    else:
        for check in checks:
            say(f"{'ok  ' if check.ok else 'FAIL'}  {check.name:<24} {check.detail}")
    return EXIT_OK if all(c.ok for c in checks) else EXIT_FAILURE


COMMAND = Command(
    name="health",
    help="run the health checks from a shell",
    description="Run the service's health checks from outside it (for cron, systemd, "
    "load balancers): monitor_heartbeat (from the service's status file), "
    "db_connection_check, archival_storage_check and ingest_lag. Exit 0 when "
    "all pass, 1 when any fails.",
    add_arguments=add_arguments,
    run=run,
)
