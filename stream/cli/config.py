"""`runwatch check-config`: validate a configuration file and show the settings it gives."""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson

from runwatch.stream.cli.common import Command
from runwatch.stream.errors import EXIT_OK
from runwatch.stream.settings.service import load_settings


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
    if args.json:
        print(orjson.dumps(settings.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    print(f"{source or 'built-in defaults'}: OK")
    for key, value in settings.model_dump(mode="json").items():
        print(f"  {key}: {value}")
    return EXIT_OK


COMMAND = Command(
    name="check-config",
    help="validate a configuration file",
    description="Validate a configuration file and print the settings it gives.",
    add_arguments=add_arguments,
    run=run,
)
