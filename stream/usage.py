"""What every command shares: exit codes, usage errors, the common options, settings."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from runwatch.sinks.sqlite_store import SqliteStore

from .settings import Settings, load_settings

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments; printed as one line, exit code 2."""


def common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, metavar="FILE",
                        help="the projection database (default: the config's database)")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="configuration file (default: config/runwatch.yaml if present)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    settings, _ = load_settings(args.config, required=args.config is not None)
    overrides: dict[str, Any] = {}
    if getattr(args, "db", None) is not None:
        overrides["database"] = args.db
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


def open_existing(settings: Settings) -> SqliteStore:
    if not settings.database.exists():
        raise UsageError(f"{settings.database}: no such database; build one with "
                         "`runwatch replay PATH...` or point --db at it")
    return SqliteStore(settings.database)
