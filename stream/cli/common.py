"""What the commands share: the shape of a command, the common options, settings, inputs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson

from runwatch.sinks.terminal import terminal_safe
from runwatch.stream.errors import UsageError
from runwatch.stream.settings.service import Settings, load_settings


@dataclass(frozen=True)
class Command:
    """One `runwatch` command: a leaf with `add_arguments` and `run`, or a group of
    `subcommands`. Every command module exposes one as `COMMAND`; the registry lists them."""

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    run: Callable[[argparse.Namespace], int] | None = None
    subcommands: tuple[Command, ...] = ()

    def __post_init__(self) -> None:
        if (self.run is None) == (not self.subcommands):
            raise ValueError(f"command {self.name!r}: give either run or subcommands")


def common_options(parser: argparse.ArgumentParser) -> None:
    """--db and --config, for every command that reads or writes the projection."""
    parser.add_argument(
        "--db",
        metavar="FILE|URL",
        help="the projection database: a SQLite file, or postgresql://… "
        "(default: the config's database)",
    )
    config_option(parser)


def config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="configuration file (default: config/runwatch.yaml if present)",
    )


def paths_argument(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("paths", nargs="*", metavar="PATH", help=help)


def file_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """The one optional FILE a checking command reads."""
    parser.add_argument("file", nargs="?", type=Path, metavar="FILE", help=help)


def json_option(parser: argparse.ArgumentParser, help: str = "print JSON") -> None:
    parser.add_argument("--json", action="store_true", help=help)


def alerts_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--alerts",
        type=Path,
        metavar="FILE",
        help="alert rules and channels (default: config/alerts.yaml if present, "
        "else the built-in defaults)",
    )


def poll_option(parser: argparse.ArgumentParser) -> None:
    """For the commands that follow files as they grow."""
    parser.add_argument(
        "--poll",
        action="store_true",
        help="poll for changes instead of inotify (network filesystems)",
    )


def fold_options(parser: argparse.ArgumentParser) -> None:
    """For the commands that fold whole logs the way `replay` does."""
    parser.add_argument(
        "--stall-after", metavar="SECONDS", help="override stall_after (e.g. 1800, 30m)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes that decode and fold large inputs "
        "(default: one per core, at most 4; 0: all in this process)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draw a progress bar (default: when stderr is a terminal)",
    )


def say(text: str, *, file: TextIO | None = None) -> None:
    """A line for a person. Text from logs, archives, configs or receivers is shown inert:
    it cannot move the cursor, retitle the window or reorder the line."""
    print(terminal_safe(text), file=file)


def print_json(value: Any) -> None:
    """`--json` output: indented, one document."""
    print(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def settings_from_args(args: argparse.Namespace) -> Settings:
    settings, _ = load_settings(args.config, required=args.config is not None)
    overrides: dict[str, Any] = {}
    if getattr(args, "db", None) is not None:
        key = "database_url" if args.db.startswith(("postgresql://", "postgres://")) else "database"
        overrides[key] = args.db
    if getattr(args, "stall_after", None) is not None:
        overrides["stall_after"] = args.stall_after
    if getattr(args, "metrics_addr", None) is not None:
        overrides["metrics_addr"] = args.metrics_addr
    if overrides:
        try:
            settings = Settings.model_validate({**settings.model_dump(), **overrides})
        except ValueError as exc:
            raise UsageError(f"bad option value: {exc}") from None
    return settings


def input_patterns(args: argparse.Namespace, settings: Settings, command: str) -> list[str]:
    """PATH arguments, else every path of the config's sources."""
    patterns: list[str] = args.paths or [p for source in settings.sources for p in source.paths]
    if not patterns:
        raise UsageError(f"{command}: give PATHs, or list sources in the config file")
    return patterns
