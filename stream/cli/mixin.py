"""`runwatch mixin`: Prometheus rules, alerts and a Grafana dashboard for the configured SLOs."""

from __future__ import annotations

import argparse
from pathlib import Path

from runwatch.sinks.atomic import write_atomically
from runwatch.stream.cli.common import Command, config_option, say
from runwatch.stream.errors import EXIT_OK, UsageError
from runwatch.stream.settings.service import load_settings, parse_duration


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config_option(parser)
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="the folder to write the mixin to"
    )
    parser.add_argument(
        "--selector",
        default='job="runwatch"',
        metavar="MATCHERS",
        help='the label matchers of the job that scrapes runwatch (default: job="runwatch")',
    )
    parser.add_argument(
        "--max-success-age",
        default="6h",
        metavar="DURATION",
        help="RunwatchNoRecentSuccess fires when no run succeeded for this long (default 6h)",
    )
    parser.add_argument(
        "--runbooks",
        default="docs/runbooks.md",
        metavar="URL",
        help="where the runbooks are read, for each alert's runbook_url "
        "(default: docs/runbooks.md)",
    )


def run(args: argparse.Namespace) -> int:
    from runwatch.sinks.mixin import MixinOptions, mixin_files  # loads prometheus_client

    settings, _ = load_settings(args.config, required=args.config is not None)
    try:
        age = float(parse_duration(args.max_success_age))
    except ValueError as exc:
        raise UsageError(f"mixin: --max-success-age: {exc}") from None
    if '"' not in args.selector or "{" in args.selector or "}" in args.selector:
        raise UsageError('mixin: --selector takes label matchers without braces: job="runwatch"')
    options = MixinOptions(args.selector, age, args.runbooks)
    files = mixin_files(settings.objectives, options)
    for name, text in files.items():
        write_atomically(args.out / name, text.encode())
    if not settings.objectives:
        say("runwatch: no SLOs configured (slos: in the config): only the service alerts")
    say(f"wrote {', '.join(str(args.out / name) for name in files)}")
    say(f"check them with: promtool check rules {args.out}/prometheus_*.yaml")
    return EXIT_OK


COMMAND = Command(
    name="mixin",
    help="write Prometheus rules, alerts and a Grafana dashboard for the SLOs",
    description="Write a monitoring mixin for runwatch: prometheus_rules.yaml (recording "
    "rules per SLO and window), prometheus_alerts.yaml (the multi-window burn-rate alerts "
    "of `runwatch slo`, runwatch down, not ingesting, no recent success) and "
    "dashboards/runwatch.json (Grafana, with a datasource variable).",
    add_arguments=add_arguments,
    run=run,
)
