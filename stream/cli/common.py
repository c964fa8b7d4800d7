"""What the commands share: the shape of a command, the common options, settings, inputs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    parser.add_argument(
        "--db",
        metavar="FILE|URL",
        help="the projection database: a SQLite file, or postgresql://… "
        "(default: the config's database)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="configuration file (default: config/runwatch.yaml if present)",
    )


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
