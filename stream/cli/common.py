"""What every command shares: exit codes, usage errors, the common options, settings."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from runwatch.sinks.store import Store, open_store
from runwatch.stream.settings.service import Settings, load_settings

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments; printed as one line, exit code 2."""


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


def open_existing(settings: Settings) -> Store:
    """The configured database, which must exist (a PostgreSQL URL is opened as given)."""
    if settings.database_url is not None:
        return open_store(settings.database_url)
    if not settings.database.exists():
        raise UsageError(
            f"{settings.database}: no such database; build one with "
            "`runwatch replay PATH...` or point --db at it"
        )
    return open_store(settings.database)
