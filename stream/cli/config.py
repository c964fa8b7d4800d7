"""`runwatch check-config`: validate a configuration file and show the settings it gives."""

from __future__ import annotations

import argparse
from typing import Any

from runwatch.sinks.store.target import Target
from runwatch.stream.cli.common import Command, file_argument, json_option, print_json, say
from runwatch.stream.errors import EXIT_OK
from runwatch.stream.settings.service import Settings, load_settings
from runwatch.stream.settings.traces import otlp_target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    file_argument(parser, "the file to check (default: config/runwatch.yaml)")
    json_option(parser, "print the settings as JSON")


def run(args: argparse.Namespace) -> int:
    settings, source = load_settings(args.file, required=args.file is not None)
    shown = printable_settings(settings)
    if args.json:
        print_json(shown)
        return EXIT_OK
    say(f"{source or 'built-in defaults'}: OK")
    for key, value in shown.items():
        say(f"  {key}: {value}")
    return EXIT_OK


def printable_settings(settings: Settings) -> dict[str, Any]:
    """The settings as JSON values, with the database URL's password and the trace headers'
    values left out; `traces.export` says where traces go once the environment is read."""
    shown = settings.model_dump(mode="json")
    if settings.database_url is not None:
        shown["database_url"] = Target.parse(settings.database_url).printable
    target = otlp_target(settings)
    shown["traces"] = {
        **settings.traces.printable(),
        "export": "off" if target is None else target.describe(),
    }
    return shown


COMMAND = Command(
    name="check-config",
    help="validate a configuration file",
    description="Validate a configuration file and print the settings it gives.",
    add_arguments=add_arguments,
    run=run,
)
