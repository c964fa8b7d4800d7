"""`runwatch`: one command line over the library. Exit codes: 0 ok, 1 failure, 2 usage/config."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from runwatch.sinks.store import Store, run_detail
from runwatch.sinks.store.api import StoreError
from runwatch.sinks.store.schema import RUN_COLUMNS
from runwatch.stream.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    common_options,
    open_existing,
    settings_from_args,
)
from runwatch.stream.console import table, terminal_safe
from runwatch.stream.services.tail import DatabaseLock, ServiceError
from runwatch.stream.settings.alerts import load_alerts
from runwatch.stream.settings.service import ConfigError, Settings, load_settings
from runwatch.stream.sources.discovery import InputError, expand


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (ConfigError, UsageError, InputError) as exc:
        print(f"runwatch: {terminal_safe(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except (StoreError, ServiceError) as exc:
        print(f"runwatch: {terminal_safe(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("runwatch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runwatch",
        description="Follow orchestrator and pattern JSONL event logs, fold them into run "
        "state, and report on it.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    replay = commands.add_parser(
        "replay",
        help="rebuild the projection database from JSONL files",
        description="Rebuild the projection from JSONL files, directories (searched "
        "recursively for *.jsonl) or globs, into a fresh database that replaces "
        "--db only when complete. Delivers nothing outward.",
    )
    replay.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="files, directories or globs (default: the config's sources)",
    )
    common_options(replay)
    replay.add_argument(
        "--stall-after", metavar="SECONDS", help="override stall_after (e.g. 1800, 30m)"
    )
    replay.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes that decode and fold large inputs "
        "(default: one per core, at most 4; 0: all in this process)",
    )
    replay.add_argument("--json", action="store_true", help="print the summary as JSON")
    replay.add_argument(
        "--alerts",
        type=Path,
        metavar="FILE",
        help="alert rules (default: config/alerts.yaml if present, else the "
        "built-in rules); decisions are recorded, not delivered",
    )
    replay.add_argument(
        "--deliver",
        action="store_true",
        help="also deliver the recorded alerts and run the completion jobs "
        "(reports, archives), then wait until the outbox is empty",
    )
    replay.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draw a progress bar (default: when stderr is a terminal)",
    )
    replay.set_defaults(handler=_replay)

    tail = commands.add_parser(
        "tail",
        help="follow event files live and keep the projection current",
        description="Follow JSONL event files (paths, directories searched recursively for "
        "*.jsonl, or globs; default: the config's sources) as they grow, rotate "
        "and truncate; fold every complete line into the projection database; "
        "write derived events to logs/monitor.jsonl and the console. Stops "
        "cleanly on SIGTERM/SIGINT.",
    )
    tail.add_argument(
        "paths", nargs="*", metavar="PATH", help="files, directories or globs to follow"
    )
    common_options(tail)
    tail.add_argument(
        "--poll",
        action="store_true",
        help="poll for changes instead of inotify (network filesystems)",
    )
    tail.add_argument(
        "--quiet", action="store_true", help="do not print derived events on the console"
    )
    tail.add_argument(
        "--nats",
        metavar="URL",
        help="consume a partition of the JetStream event log instead of files "
        "(with --partition K/N and a postgresql:// --db)",
    )
    tail.add_argument(
        "--partition",
        metavar="K[,K]/N",
        help="with --nats: own partition K of N (0 <= K < N), or several as "
        "K,K/N; a second processor for a partition waits as a standby",
    )
    tail.add_argument(
        "--metrics-addr",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics and /healthz, /livez, /readyz here "
        "(e.g. 127.0.0.1:9464; a bare :PORT binds to 127.0.0.1)",
    )
    tail.add_argument(
        "--alerts",
        type=Path,
        metavar="FILE",
        help="alert rules and channels (default: config/alerts.yaml if present, "
        "else the built-in defaults)",
    )
    tail.set_defaults(handler=_tail)

    status = commands.add_parser(
        "status",
        help="show runs from the projection database",
        description="Show the runs in the projection database, newest first.",
    )
    common_options(status)
    status.add_argument(
        "--run", metavar="ID", help="show one run with its tasks, workstreams and pattern runs"
    )
    status.add_argument(
        "--status",
        dest="only",
        metavar="STATUS",
        help="only runs with this status (e.g. failed, running)",
    )
    status.add_argument(
        "--limit",
        type=int,
        help="at most this many runs (default: 50 in the table, all with --json)",
    )
    status.add_argument(
        "--json", action="store_true", help="print a JSON list of run objects with the runs columns"
    )
    status.add_argument(
        "--watch",
        action="store_true",
        help="refresh in place until q or Ctrl-C: active runs with progress, "
        "stalls, recent completions and alerts, ingest lag",
    )
    status.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="with --watch: seconds between refreshes (default 1)",
    )
    status.set_defaults(handler=_status)

    simulate = commands.add_parser(
        "simulate",
        help="write realistic orchestrator and pattern event files",
        description="Write realistic orchestrator (both shapes) and pattern JSONL files "
        "with retries, failures and stalls; deterministic for a seed.",
    )
    from runwatch.stream.devtools.simulate import add_arguments as simulate_arguments
    from runwatch.stream.devtools.simulate import run as simulate_run

    simulate_arguments(simulate)
    simulate.set_defaults(handler=simulate_run)

    health = commands.add_parser(
        "health",
        help="run the health checks from a shell",
        description="Run the service's health checks from outside it (for cron, systemd, "
        "load balancers): monitor_heartbeat (from the service's status file), "
        "db_connection_check, archival_storage_check and ingest_lag. Exit 0 when "
        "all pass, 1 when any fails.",
    )
    common_options(health)
    health.add_argument("--json", action="store_true", help="print the checks as JSON")
    health.set_defaults(handler=_health)

    _alerts_commands(commands)
    _completion_commands(commands)
    from runwatch.stream.analysis.analyze import add_command as analyze_command
    from runwatch.stream.services.ship import add_command as ship_command

    analyze_command(commands)
    ship_command(commands)

    check = commands.add_parser(
        "check-config",
        help="validate a configuration file",
        description="Validate a configuration file and print the settings it gives.",
    )
    check.add_argument(
        "file",
        nargs="?",
        type=Path,
        metavar="FILE",
        help="the file to check (default: config/runwatch.yaml)",
    )
    check.add_argument("--json", action="store_true", help="print the settings as JSON")
    check.set_defaults(handler=_check_config)
    return parser


def _patterns(args: argparse.Namespace, settings: Settings, command: str) -> list[str]:
    """PATH arguments, else every path of the config's sources."""
    patterns: list[str] = args.paths or [p for source in settings.sources for p in source.paths]
    if not patterns:
        raise UsageError(f"{command}: give PATHs, or list sources in the config file")
    return patterns


def _replay(args: argparse.Namespace) -> int:
    from runwatch.stream.services.replay import replay

    settings = settings_from_args(args)
    patterns = _patterns(args, settings, "replay")
    files = expand(patterns)
    if not files:
        raise UsageError(f"replay: no files match {' '.join(patterns)}")
    if args.workers is not None and args.workers < 0:
        raise UsageError("replay: --workers must be 0 or more")
    if settings.database_url is not None and args.deliver:
        raise UsageError(
            "replay --deliver: carrying out the outbox needs a SQLite --db; into "
            "PostgreSQL the processors deliver it"
        )
    lock = DatabaseLock(settings.database)
    if settings.database_url is None:  # PostgreSQL's swap takes the schema's writer lock
        lock.acquire()
    try:
        alerts = load_alerts(args.alerts, required=args.alerts is not None)
        summary = replay(
            files,
            settings.database_url or settings.database,
            settings,
            progress=args.progress,
            workers=args.workers,
            alerts=alerts,
            deliver=args.deliver,
        )
        if args.deliver:
            from runwatch.stream.cli.operate import deliver_outbox

            deliver_outbox(settings, alerts, quiet=args.json)
    finally:
        lock.release()
    if args.json:
        print(orjson.dumps(summary.as_dict(), option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    data = summary.as_dict()
    rejected = ", ".join(f"{k} {v:,}" for k, v in data["rejected_by_reason"].items())
    runs = ", ".join(f"{k} {v:,}" for k, v in data["runs_by_status"].items()) or "none"
    print(
        f"replayed {data['files']} file(s), {data['lines']:,} lines "
        f"({data['bytes'] / 1e6:,.1f} MB) in {data['seconds']:.2f} s: "
        f"{data['events_per_s']:,} events/s"
    )
    print(
        f"  events    accepted {data['events_accepted']:,}, duplicate "
        f"{data['events_duplicate']:,}, rejected {data['events_rejected']:,}"
        + (f" ({rejected})" if rejected else "")
    )
    print(
        f"  runs      {sum(data['runs_by_status'].values()):,}: {runs}; "
        f"stalled {data['stalled_runs']:,}"
    )
    print(f"  patterns  {data['pattern_runs']:,} pattern runs")
    print(f"  database  {data['database']}")
    return EXIT_OK


def _tail(args: argparse.Namespace) -> int:
    from runwatch.stream.services.tail import TailService

    settings = settings_from_args(args)
    alerts = load_alerts(args.alerts, required=args.alerts is not None)
    if args.nats or args.partition:
        return _tail_partition(args, settings, alerts)
    service = TailService(
        _patterns(args, settings, "tail"), settings, poll=args.poll, quiet=args.quiet, alerts=alerts
    )
    return service.run()


def _tail_partition(args: argparse.Namespace, settings: Settings, alerts: Any) -> int:
    from runwatch.sinks.store import is_postgres
    from runwatch.stream.services.partition import Partitions, PartitionService

    if not (args.nats and args.partition):
        raise UsageError("tail: --nats and --partition K/N go together")
    if args.paths:
        raise UsageError("tail: with --nats, events come from JetStream, not from PATHs")
    if settings.database_url is None or not is_postgres(settings.database_url):
        raise UsageError(
            "tail --nats: processors share one PostgreSQL projection; give --db postgresql://…"
        )
    try:
        partitions = Partitions.parse(args.partition)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return PartitionService(args.nats, partitions, settings, alerts, quiet=args.quiet).run()


def _status(args: argparse.Namespace) -> int:
    if args.watch:
        if args.run or args.only or args.json:
            raise UsageError("status: --watch cannot be combined with --run, --status or --json")
        from runwatch.stream.cli.live import watch

        return watch(settings_from_args(args), interval=args.interval)
    store = open_existing(settings_from_args(args))
    try:
        if args.run:
            return _status_one(store, args.run, args.json)
        where, params = ("WHERE status = ?", [args.only]) if args.only else ("", [])
        limit = args.limit if args.limit is not None else (None if args.json else 50)
        if limit is not None:
            params.append(limit)
        cursor = store.db.execute(
            f"SELECT {', '.join(RUN_COLUMNS)} FROM runs {where} "
            "ORDER BY last_event_at DESC, run_id" + ("" if limit is None else " LIMIT ?"),
            params,
        )
        runs = [dict(zip(RUN_COLUMNS, row, strict=True)) for row in cursor]
        counts = dict(store.db.execute("SELECT status, count(*) FROM runs GROUP BY status"))
    finally:
        store.close()
    if args.json:
        for run in runs:
            run["stalled"] = bool(run["stalled"])
        print(orjson.dumps(runs, option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    if not runs:
        print("no runs" + (f" with status {args.only}" if args.only else ""))
        return EXIT_OK
    rows = [
        [
            r["run_id"],
            r["status"] + (" (stalled)" if r["stalled"] else ""),
            f"{r['tasks_succeeded']}/{r['tasks_total']}",
            r["tasks_failed"],
            r["events_total"],
            r["error_events"],
            r["duration_s"],
            r["last_event_at"],
        ]
        for r in runs
    ]
    print(
        table(
            ["RUN", "STATUS", "DONE", "FAILED", "EVENTS", "ERRORS", "DURATION_S", "LAST_EVENT"],
            rows,
        )
    )
    print("\n" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return EXIT_OK


def _status_one(store: Store, run_id: str, as_json: bool) -> int:
    found = run_detail(store.db, run_id)
    if found is None:
        print(f"runwatch: no run {terminal_safe(repr(run_id))} in {store.path}", file=sys.stderr)
        return EXIT_FAILURE
    run: dict[str, Any] = found.pop("run")
    run["stalled"] = bool(run["stalled"])
    detail = found
    if as_json:
        print(orjson.dumps({**run, **detail}, option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    width = max(len(k) for k in run)
    print(
        "\n".join(
            f"{k.ljust(width)}  {'-' if v is None else terminal_safe(str(v))}"
            for k, v in run.items()
        )
    )
    for name, rows in detail.items():
        if rows:
            print(f"\n{name}:")
            columns = [c for c in rows[0] if c != "run_id"]
            print(table(columns, [[r[c] for c in columns] for r in rows]))
    return EXIT_OK


def _health(args: argparse.Namespace) -> int:
    from runwatch.stream.services.health import from_status_file, report

    checks = from_status_file(settings_from_args(args))
    if args.json:
        print(orjson.dumps(report(checks), option=orjson.OPT_INDENT_2).decode())
    else:
        for check in checks:
            print(f"{'ok  ' if check.ok else 'FAIL'}  {check.name:<24} {check.detail}")
    return EXIT_OK if all(c.ok for c in checks) else EXIT_FAILURE


def _check_config(args: argparse.Namespace) -> int:
    settings, source = load_settings(args.file, required=args.file is not None)
    if args.json:
        print(orjson.dumps(settings.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    print(f"{source or 'built-in defaults'}: OK")
    for key, value in settings.model_dump(mode="json").items():
        print(f"  {key}: {value}")
    return EXIT_OK


def _alerts_commands(commands: Any) -> None:
    from runwatch.stream.cli import operate

    alerts = commands.add_parser(
        "alerts",
        help="check, test and list alert notifications",
        description="Alert rules, channels and the outbox of decided notifications.",
    )
    sub = alerts.add_subparsers(
        title="commands", metavar="COMMAND", required=True, help="check, test or list"
    )
    check = sub.add_parser(
        "check",
        help="validate an alerts file",
        description="Validate an alerts file (default: config/alerts.yaml "
        "if present, else the built-in defaults) and show its "
        "rules and channels, secrets hidden.",
    )
    check.add_argument(
        "file", nargs="?", type=Path, metavar="FILE", help="the alerts file to check"
    )
    check.set_defaults(handler=operate.alerts_check)
    test = sub.add_parser(
        "test",
        help="send a test notification",
        description="Send one test notification through every enabled "
        "channel, or one; exit 1 if any delivery fails.",
    )
    test.add_argument("--channel", metavar="NAME", help="only this channel")
    test.add_argument("--alerts", type=Path, metavar="FILE", help="alerts file")
    test.add_argument("--config", type=Path, metavar="FILE", help="configuration file")
    test.set_defaults(handler=operate.alerts_test)
    listing = sub.add_parser(
        "list",
        help="show recent alerts and their delivery state",
        description="Show the newest decided notifications, one row per "
        "channel, with their delivery state.",
    )
    common_options(listing)
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    listing.add_argument(
        "--state", metavar="STATE", help="only pending, delivered, failed, recorded or skipped"
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=operate.alerts_list)


def _completion_commands(commands: Any) -> None:
    from runwatch.stream.cli import operate

    report = commands.add_parser(
        "report",
        help="write a run's reports",
        description="Write reports/<run>_summary.json, _metrics.json and <run>.html for a run, "
        "and refresh reports/index.html. Idempotent.",
    )
    report.add_argument("run", metavar="RUN", help="the run id")
    common_options(report)
    report.set_defaults(handler=operate.report_run)
    archive = commands.add_parser(
        "archive",
        help="archive a run, or verify archives",
        description="Write .archive/<run>.zip (artifacts, events, reports, manifest) for a run. "
        "An existing valid archive is never rewritten. With --verify, re-check "
        "archives against their manifests instead.",
    )
    archive.add_argument("run", nargs="?", metavar="RUN", help="the run id")
    common_options(archive)
    archive.add_argument(
        "--new-version", action="store_true", help="write a new version beside the existing archive"
    )
    archive.add_argument(
        "--verify", action="store_true", help="verify RUN's archives (default: every archive)"
    )
    archive.add_argument("--json", action="store_true", help="print JSON")
    archive.set_defaults(handler=operate.archive_run)
    audit = commands.add_parser(
        "audit",
        help="check the audit trail",
        description="The audit trail logs/monitor.jsonl is hash-chained.",
    )
    sub = audit.add_subparsers(title="commands", metavar="COMMAND", required=True, help="verify")
    verify = sub.add_parser(
        "verify",
        help="check the hash chain",
        description="Check every record's hash, the chain and the "
        "sequence, and the database's anchor of the trail's "
        "head; name the first bad line. Exit 1 if bad.",
    )
    verify.add_argument(
        "file",
        nargs="?",
        type=Path,
        metavar="FILE",
        help="the trail (default: logs_dir/monitor.jsonl)",
    )
    common_options(verify)
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(handler=operate.audit_verify)


if __name__ == "__main__":
    sys.exit(main())
