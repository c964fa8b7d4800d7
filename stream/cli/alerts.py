"""`runwatch alerts check|test|list`: the alert rules and channels, and the decided alerts."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from runwatch.projections.alerts import Rule
from runwatch.projections.events import format_time
from runwatch.sinks.channels import describe
from runwatch.sinks.store import reads
from runwatch.stream.cli.common import (
    Command,
    alerts_option,
    common_options,
    file_argument,
    json_option,
    print_json,
    say,
    settings_from_args,
)
from runwatch.stream.console import table
from runwatch.stream.delivery.handlers import build_channel
from runwatch.stream.errors import EXIT_FAILURE, EXIT_OK, UsageError
from runwatch.stream.settings.alerts import load_alerts
from runwatch.stream.settings.database import open_existing


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    file_argument(parser, "the alerts file to check")


def check(args: argparse.Namespace) -> int:
    setup = load_alerts(args.file, required=args.file is not None)
    say(
        f"{setup.source}: OK (alert_lookback {setup.lookback_s:g} s, "
        f"{setup.delivery.max_attempts} attempts)"
    )
    for name, config in setup.channels.items():
        say(
            f"  channel {name}: "
            + ("off (its address is empty)" if config is None else describe(config))
        )
    for rule in setup.rules.rules.values():
        kinds = ", ".join(m.type for m in rule.fire)
        say(
            f"  rule {rule.name}: {_severity(rule)} on {kinds} → {', '.join(rule.channels)}; "
            f"throttle {rule.throttle_us / 1e6:g} s"
        )
    return EXIT_OK


def add_test_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--channel", metavar="NAME", help="only this channel")
    alerts_option(parser)


def send_test(args: argparse.Namespace) -> int:
    setup = load_alerts(args.alerts, required=args.alerts is not None)
    names = [args.channel] if args.channel else sorted(setup.enabled)
    failures = 0
    for name in names:
        if name not in setup.channels:
            raise UsageError(
                f"alerts test: no channel {name!r} (defined: {', '.join(sorted(setup.channels))})"
            )
        config = setup.channels[name]
        if config is None:
            say(f"{name}: off (its address is empty), nothing sent")
            failures += 1
            continue
        outcome = build_channel(name, config).send(_test_notification(name))
        say(f"{name}: {outcome.status}" + (f" ({outcome.detail})" if outcome.detail else ""))
        failures += outcome.status != "delivered"
    return EXIT_FAILURE if failures else EXIT_OK


def _test_notification(channel: str) -> dict[str, Any]:
    now = format_time(time.time_ns() // 1000)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    return {
        "id": f"test-{channel}-{stamp}",
        "alert_id": f"test-{stamp}",
        "rule": "test",
        "state": "firing",
        "severity": "info",
        "group_key": "test",
        "labels": {"alertname": "test", "severity": "info"},
        "summary": "runwatch test notification: this channel works",
        "description": "",
        "run_id": None,
        "event": {"type": "TEST"},
        "event_id": f"test-{stamp}",
        "event_time": now,
        "starts_at": now,
        "ends_at": None,
        "suppressed": 0,
        "test": True,
    }


def add_list_arguments(parser: argparse.ArgumentParser) -> None:
    common_options(parser)
    parser.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    parser.add_argument(
        "--state", metavar="STATE", help="only pending, delivered, failed, recorded or skipped"
    )
    json_option(parser)


def list_alerts(args: argparse.Namespace) -> int:
    store = open_existing(settings_from_args(args))
    try:
        rows = reads.alerts(store.db, state=args.state, limit=args.limit)
    finally:
        store.close()
    for row in rows:
        payload = orjson.loads(row.pop("payload"))
        row.update(
            alert_id=payload.get("alert_id"),
            alert_state=payload.get("state"),
            severity=payload.get("severity"),
            summary=payload.get("summary"),
        )
    if args.json:
        print_json(rows)
    elif not rows:
        print("no alerts")
    else:
        print(
            table(
                ["DECIDED", "RULE", "SEVERITY", "CHANNEL", "DELIVERY", "TRIES", "SUMMARY"],
                [
                    [
                        r["decided_at"],
                        r["rule"],
                        r["severity"],
                        r["channel"],
                        r["state"],
                        r["attempts"],
                        f"[{r['alert_state']}] {r['summary']}"
                        + (f" — {r['last_error']}" if r["last_error"] else ""),
                    ]
                    for r in rows
                ],
            )
        )
    return EXIT_OK


def _severity(rule: Rule) -> str:
    """`warning (level page: critical)` for a rule whose severity follows an event field."""
    if rule.severity_by is None:
        return rule.severity
    field, choices = rule.severity_by
    picked = ", ".join(f"{field} {value}: {severity}" for value, severity in choices)
    return f"{rule.severity} ({picked})"


COMMAND = Command(
    name="alerts",
    help="check, test and list alert notifications",
    description="Alert rules, channels and the outbox of decided notifications.",
    subcommands=(
        Command(
            name="check",
            help="validate an alerts file",
            description="Validate an alerts file (default: config/alerts.yaml "
            "if present, else the built-in defaults) and show its "
            "rules and channels, secrets hidden.",
            add_arguments=add_check_arguments,
            run=check,
        ),
        Command(
            name="test",
            help="send a test notification",
            description="Send one test notification through every enabled "
            "channel, or one; exit 1 if any delivery fails.",
            add_arguments=add_test_arguments,
            run=send_test,
        ),
        Command(
            name="list",
            help="show recent alerts and their delivery state",
            description="Show the newest decided notifications, one row per "
            "channel, with their delivery state.",
            add_arguments=add_list_arguments,
            run=list_alerts,
        ),
    ),
)
