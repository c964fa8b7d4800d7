"""The one list of `runwatch` commands, and the parser built from it.

A new command is a module in this package exposing `COMMAND` (see `common.Command`) and one
line in `COMMANDS`; nothing else adds subcommands to the parser.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Final

from runwatch.stream.cli import (
    alerts,
    analyze,
    archive,
    audit,
    config,
    health,
    mixin,
    replay,
    report,
    serve,
    ship,
    simulate,
    slo,
    status,
    tail,
    traces,
)
from runwatch.stream.cli.common import Command

COMMANDS: Final[tuple[Command, ...]] = (
    replay.COMMAND,
    tail.COMMAND,
    status.COMMAND,
    serve.COMMAND,
    slo.COMMAND,
    mixin.COMMAND,
    simulate.COMMAND,
    health.COMMAND,
    alerts.COMMAND,
    report.COMMAND,
    archive.COMMAND,
    audit.COMMAND,
    analyze.COMMAND,
    ship.COMMAND,
    config.COMMAND,
    traces.COMMAND,
)


def build_parser() -> argparse.ArgumentParser:
    """`runwatch` and every command in COMMANDS; a parsed command's `handler` is its `run`."""
    parser = argparse.ArgumentParser(
        prog="runwatch",
        description="Follow orchestrator and pattern JSONL event logs, fold them into run "
        "state, and report on it.",
    )
    _add_commands(parser, COMMANDS, help=None)
    return parser


def _add_commands(
    parser: argparse.ArgumentParser, commands: Sequence[Command], help: str | None
) -> None:
    choices = parser.add_subparsers(title="commands", metavar="COMMAND", required=True, help=help)
    for command in commands:
        child = choices.add_parser(command.name, help=command.help, description=command.description)
        if command.add_arguments is not None:
            command.add_arguments(child)
        if command.run is not None:
            child.set_defaults(handler=command.run)
        if command.subcommands:
            _add_commands(child, command.subcommands, help=_either(command.subcommands))


def _either(commands: Sequence[Command]) -> str:
    """A group's COMMAND help: its subcommands as "check, test or list"."""
    names = [command.name for command in commands]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
