"""`runwatch slo`: each configured SLO's error budget and burn rates, now or at a moment."""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Any, Final

from runwatch.projections.slo import WINDOWS, evaluate, horizon_s
from runwatch.sinks.store.slo_reads import finished_runs
from runwatch.stream.cli.common import (
    Command,
    common_options,
    json_option,
    print_json,
    say,
    settings_from_args,
)
from runwatch.stream.console import table
from runwatch.stream.core.decode import BadField, parse_time
from runwatch.stream.errors import EXIT_OK, UsageError
from runwatch.stream.settings.database import open_existing
from runwatch.stream.settings.service import Settings

_AGO: Final = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNIT_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common_options(parser)
    parser.add_argument(
        "--at",
        metavar="TIME",
        help="judge the SLOs at this moment: an ISO-8601 time, epoch seconds, or a duration "
        "back from now such as 2h (default: now)",
    )
    json_option(
        parser,
        "print a JSON list, one object per SLO: name, sli, objective, window_s, total, good, "
        "bad, ratio, budget_remaining, burn_rates and alert",
    )


def moment(text: str | None, now_us: int) -> int:
    """--at as UTC microseconds."""
    if text is None:
        return now_us
    text = text.strip()
    if ago := _AGO.fullmatch(text):
        return now_us - round(float(ago[1]) * _UNIT_S[ago[2]] * 1_000_000)
    try:
        return parse_time(float(text) if text.replace(".", "", 1).isdigit() else text, "--at")
    except BadField:
        raise UsageError(
            f"slo: --at {text!r} is not an ISO-8601 time, epoch seconds or a duration back "
            "from now (90m, 12h, 7d)"
        ) from None


def report(settings: Settings, at_us: int) -> list[dict[str, Any]]:
    """Every configured SLO judged at `at_us` over the database's finished runs."""
    slos = settings.objectives
    if not slos:
        return []
    store = open_existing(settings)
    try:
        since = at_us - round(horizon_s(slos) * 1_000_000)
        runs = finished_runs(store.db, since)
    finally:
        store.close()
    return evaluate(slos, runs, at_us)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    at_us = moment(args.at, time.time_ns() // 1000)
    if not settings.objectives:
        say(
            "runwatch: no SLOs configured; add `slos:` to the config file "
            "(see config/runwatch.yaml)",
            file=sys.stderr,
        )
    results = report(settings, at_us)
    if args.json:
        print_json(results)
    elif results:
        print(render(results))
    return EXIT_OK


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{value * 100:.2f}%"


def _rate(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}"


def render(results: list[dict[str, Any]]) -> str:
    headers = ["SLO", "SLI", "OBJECTIVE", "RUNS", "BAD", "RATIO", "BUDGET_LEFT"]
    headers += [f"BURN_{name}" for name in WINDOWS] + ["ALERT"]
    rows = [
        [
            r["name"],
            r["sli"],
            _percent(r["objective"]),
            r["total"],
            r["bad"],
            _percent(r["ratio"]),
            _percent(r["budget_remaining"]),
            *(_rate(r["burn_rates"][name]) for name in WINDOWS),
            r["alert"] or "ok",
        ]
        for r in results
    ]
    return table(headers, rows)


COMMAND = Command(
    name="slo",
    help="show each SLO's error budget, burn rates and alert level",
    description="Judge the SLOs configured under `slos:` over the finished runs in the "
    "projection database: the share of good runs in each SLO's window, the error budget "
    "left (negative when overspent), the burn rate over 5m, 30m, 1h, 2h, 6h, 1d and 3d "
    "(- when a window holds no run), and the alert level (page, ticket or ok).",
    add_arguments=add_arguments,
    run=run,
)
