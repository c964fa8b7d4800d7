"""`runwatch serve`: the web dashboard over a projection, read-only, without the service."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from runwatch.sinks.store import StoreError, db_errors, web_reads
from runwatch.sinks.store.target import Target
from runwatch.stream.cli.common import Command, common_options, say, settings_from_args
from runwatch.stream.errors import EXIT_OK, ServiceError, UsageError
from runwatch.stream.settings.database import existing_file
from runwatch.stream.settings.service import parse_address

DEFAULT_ADDR = "127.0.0.1:9465"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common_options(parser)
    parser.add_argument(
        "--addr",
        default=DEFAULT_ADDR,
        metavar="HOST:PORT",
        help=f"where to listen (default {DEFAULT_ADDR}; a bare :PORT binds to 127.0.0.1; "
        "0.0.0.0 only if you mean every interface)",
    )
    parser.add_argument(
        "--poll",
        type=float,
        default=0.25,
        metavar="SECONDS",
        help="how often the live feed looks for committed changes (default 0.25)",
    )


def run(args: argparse.Namespace) -> int:
    from runwatch.stream.web.app import Dashboard
    from runwatch.stream.web.server import WebServer

    settings = settings_from_args(args)
    if not 0.01 <= args.poll <= 10:
        raise UsageError(f"serve: --poll must be between 0.01 and 10 seconds, not {args.poll}")
    try:
        host, port = parse_address(args.addr)
    except ValueError as exc:
        raise UsageError(f"serve: --addr {exc}") from None
    target: str | Path = settings.database_url or existing_file(settings)
    token = settings.http.token
    dashboard = Dashboard(
        target,
        reports=settings.reports.directory,
        token=None if token is None else token.get_secret_value(),
        health=lambda endpoint: _health(dashboard),
        poll_s=args.poll,
        slos=settings.objectives,
    )
    try:
        dashboard.readers.read(web_reads.change_seq)  # a database we cannot read fails now
    except db_errors() as exc:
        raise StoreError(
            f"{_printable(target)}: cannot read ({' '.join(str(exc).split())})"
        ) from None
    try:
        server = WebServer(host, port, dashboard)
    except OSError as exc:
        raise ServiceError(f"serve: cannot listen on {args.addr} ({exc.strerror})") from None
    stop = threading.Event()
    previous = _on_signals(lambda *_: stop.set())
    try:
        server.start()
        say(f"dashboard on {server.url}/ (read-only, over {_printable(target)}); Ctrl-C stops")
        stop.wait()
    finally:
        server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return EXIT_OK


def _printable(target: str | Path) -> str:
    return str(target) if isinstance(target, Path) else Target.parse(target).printable


def _health(dashboard: Any) -> tuple[bool, dict[str, Any]]:
    """The one check that matters without the service: the database answers."""
    failures: tuple[type[Exception], ...] = (StoreError, *db_errors())
    try:
        seq = dashboard.readers.read(web_reads.change_seq)
    except failures as exc:
        ok, detail = False, " ".join(str(exc).split())
    else:
        ok, detail = True, f"readable, change {seq}"
    return ok, {
        "status": "ok" if ok else "fail",
        "checks": {"db_connection_check": {"ok": ok, "detail": detail}},
    }


def _on_signals(handler: Any) -> dict[int, Any]:
    previous: dict[int, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, handler)
    return previous


COMMAND = Command(
    "serve",
    "serve the web dashboard over a database, read-only",
    "Serve the live web dashboard (runs, timelines, alerts, /api/…, /api/events) over a "
    "SQLite file or a PostgreSQL projection that another process writes (runwatch tail, "
    "partition processors, or a finished replay). It never writes. With http.token in the "
    "config, every page and API call requires that bearer token.",
    add_arguments,
    run,
)
