"""`runwatch check-config`: validate a configuration file and show the settings it gives."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import orjson

from runwatch.sinks.store.postgres_sql import Target
from runwatch.stream.cli.common import Command
from runwatch.stream.errors import EXIT_OK
from runwatch.stream.settings.service import Settings, load_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file",
        nargs="?",
        type=Path,
        metavar="FILE",
        help="the file to check (default: config/runwatch.yaml)",
    )
    parser.add_argument("--json", action="store_true", help="print the settings as JSON")


def run(args: argparse.Namespace) -> int:
    settings, source = load_settings(args.file, required=args.file is not None)
    shown = printable_settings(settings)
    if args.json:
        print(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    print(f"{source or 'built-in defaults'}: OK")
    for key, value in shown.items():
        print(f"  {key}: {value}")
    return EXIT_OK


def printable_settings(settings: Settings) -> dict[str, Any]:
    """The settings as JSON values, with the database URL's password left out."""
    shown = settings.model_dump(mode="json")
    if settings.database_url is not None:
        shown["database_url"] = Target.parse(settings.database_url).printable
    return shown


COMMAND = Command(
    name="check-config",
    help="validate a configuration file",
    description="Validate a configuration file and print the settings it gives.",
    add_arguments=add_arguments,
    run=run,
)
