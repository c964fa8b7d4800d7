"""`runwatch ship`: publish event files, line by line, to NATS JetStream
(the service is `runwatch.stream.services.ship`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from runwatch.stream.cli.common import (
    Command,
    config_option,
    input_patterns,
    paths_argument,
    poll_option,
    settings_from_args,
)
from runwatch.stream.errors import UsageError
from runwatch.stream.sources.nats import STREAM, subject_token

DEFAULT_URL: Final = "nats://127.0.0.1:4222"
DEFAULT_DB: Final = Path(".state/ship.db")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    paths_argument(parser, "files, directories or globs to follow (default: the config's sources)")
    parser.add_argument(
        "--nats",
        default=DEFAULT_URL,
        metavar="URL",
        help="NATS server URL, or several separated by commas (default: %(default)s)",
    )
    parser.add_argument(
        "--db",
        dest="checkpoints",
        type=Path,
        default=DEFAULT_DB,
        metavar="FILE",
        help="the shipper's checkpoint database, one shipper per file (default: %(default)s)",
    )
    config_option(parser)
    parser.add_argument(
        "--stream",
        default=STREAM,
        metavar="NAME",
        help="JetStream stream, created on runwatch.part.> if missing (default: %(default)s)",
    )
    poll_option(parser)


def run(args: argparse.Namespace) -> int:
    from runwatch.stream.services.ship import ShipService  # loads the NATS client

    settings = settings_from_args(args)
    patterns = input_patterns(args, settings, "ship")
    for url in args.nats.split(","):
        parts = urlsplit(url)
        if parts.scheme not in ("nats", "tls", "ws", "wss") or not parts.hostname:
            raise UsageError(f"ship: --nats {url!r} is not a URL like nats://host:4222")
    # A stream name follows the rule of a subject token, which keeps a safe name unchanged.
    if subject_token(args.stream) != args.stream:
        raise UsageError(f"ship: --stream {args.stream!r}: use letters, digits, _ and -")
    return ShipService(
        patterns,
        settings,
        url=args.nats,
        database=args.checkpoints,
        stream=args.stream,
        poll=args.poll,
    ).run()


COMMAND = Command(
    name="ship",
    help="publish event files, line by line, to NATS JetStream",
    description="Follow files, directories (recursively, *.jsonl) or globs (default: the "
    "config's sources) exactly as `tail` does, and publish every line to the "
    "JetStream subject runwatch.events.<run id> with <run id>/<event id> as "
    "Nats-Msg-Id. A file's checkpoint advances only once its lines are acked; "
    "while NATS is away the batch is retried. The server partitions runs with "
    "the mapping runwatch.events.* -> "
    "runwatch.part.{{partition(N,1)}}.{{wildcard(1)}} in its config, and the "
    "stream takes runwatch.part.>. Stops cleanly on SIGTERM/SIGINT.",
    add_arguments=add_arguments,
    run=run,
)
