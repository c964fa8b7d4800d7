"""The operator's commands beside the service: alerts check/test/list, report, archive, audit
verify, and delivering the outbox after `replay --deliver`."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from runwatch.projections.events import format_time
from runwatch.sinks.archive import run_archives, verify_archive
from runwatch.sinks.audit import AuditLog, verify_trail
from runwatch.sinks.channels import describe
from runwatch.sinks.store.api import StoreError
from runwatch.sinks.store.sqlite import SqliteStore
from runwatch.stream.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    UsageError,
    open_existing,
    settings_from_args,
)
from runwatch.stream.console import table
from runwatch.stream.delivery import jobs
from runwatch.stream.delivery.dispatcher import Result, record
from runwatch.stream.delivery.handlers import build_channel
from runwatch.stream.services.lock import DatabaseLock, ServiceError
from runwatch.stream.services.runtime import Runtime, now_us
from runwatch.stream.settings.alerts import AlertSetup, load_alerts
from runwatch.stream.settings.service import Settings


def alerts_check(args: argparse.Namespace) -> int:
    setup = load_alerts(args.file, required=args.file is not None)
    print(
        f"{setup.source}: OK (alert_lookback {setup.lookback_s:g} s, "
        f"{setup.delivery.max_attempts} attempts)"
    )
    for name, config in setup.channels.items():
        print(
            f"  channel {name}: "
            + ("off (its address is empty)" if config is None else describe(config))
        )
    for rule in setup.rules.rules.values():
        kinds = ", ".join(m.type for m in rule.fire)
        print(
            f"  rule {rule.name}: {rule.severity} on {kinds} → {', '.join(rule.channels)}; "
            f"throttle {rule.throttle_us / 1e6:g} s"
        )
    return EXIT_OK


def alerts_test(args: argparse.Namespace) -> int:
    setup = load_alerts(args.alerts, required=args.alerts is not None)
    names = [args.channel] if args.channel else sorted(setup.enabled)
    failures = 0
    for name in names:
        if name not in setup.channels:
            raise UsageError(
                f"alerts test: no channel {name!r} (defined: {', '.join(sorted(setup.channels))})"
            )
        config = setup.channels[name]
        if config is None:
            print(f"{name}: off (its address is empty), nothing sent")
            failures += 1
            continue
        outcome = build_channel(name, config).send(_test_notification(name))
        print(f"{name}: {outcome.status}" + (f" ({outcome.detail})" if outcome.detail else ""))
        failures += outcome.status != "delivered"
    return EXIT_FAILURE if failures else EXIT_OK


def _test_notification(channel: str) -> dict[str, Any]:
    now = format_time(time.time_ns() // 1000)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    return {
        "id": f"test-{channel}-{stamp}",
        "alert_id": f"test-{stamp}",
        "rule": "test",
        "state": "firing",
        "severity": "info",
        "group_key": "test",
        "labels": {"alertname": "test", "severity": "info"},
        "summary": "runwatch test notification: this channel works",
        "description": "",
        "run_id": None,
        "event": {"type": "TEST"},
        "event_id": f"test-{stamp}",
        "event_time": now,
        "starts_at": now,
        "ends_at": None,
        "suppressed": 0,
        "test": True,
    }


def alerts_list(args: argparse.Namespace) -> int:
    store = open_existing(settings_from_args(args))
    try:
        where, params = ("WHERE state = ?", [args.state]) if args.state else ("", [])
        cursor = store.db.execute(
            "SELECT decided_at, rule, channel, state, attempts, run_id, last_error, payload "
            f"FROM alerts {where} ORDER BY decided_at DESC, id LIMIT ?",
            [*params, args.limit],
        )
        rows = [
            dict(
                zip(
                    (
                        "decided_at",
                        "rule",
                        "channel",
                        "state",
                        "attempts",
                        "run_id",
                        "last_error",
                        "payload",
                    ),
                    row,
                    strict=True,
                )
            )
            for row in cursor
        ]
    finally:
        store.close()
    for row in rows:
        payload = orjson.loads(row.pop("payload"))
        row.update(
            alert_id=payload.get("alert_id"),
            alert_state=payload.get("state"),
            severity=payload.get("severity"),
            summary=payload.get("summary"),
        )
    if args.json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
    elif not rows:
        print("no alerts")
    else:
        print(
            table(
                ["DECIDED", "RULE", "SEVERITY", "CHANNEL", "DELIVERY", "TRIES", "SUMMARY"],
                [
                    [
                        r["decided_at"],
                        r["rule"],
                        r["severity"],
                        r["channel"],
                        r["state"],
                        r["attempts"],
                        f"[{r['alert_state']}] {r['summary']}"
                        + (f" — {r['last_error']}" if r["last_error"] else ""),
                    ]
                    for r in rows
                ],
            )
        )
    return EXIT_OK


def report_run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    return _manual_job(settings, args.run, lambda db: jobs.report(db, settings, args.run))


def archive_run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.verify:
        return _verify_archives(settings, args.run, args.json)
    if not args.run:
        raise UsageError("archive: give a RUN, or --verify")
    return _manual_job(
        settings,
        args.run,
        lambda db: jobs.archive(db, settings, args.run, new_version=args.new_version),
    )


def _manual_job(settings: Settings, run_id: str, job: Any) -> int:
    """Run a job now and record it like the dispatcher would (the alert rules see its
    derived events at the service's next commit). The trail is appended here only when no
    service holds the database; otherwise the service appends these records itself."""
    store = open_existing(settings)
    lock = DatabaseLock(settings.database)
    try:
        lock.acquire()
        audit: AuditLog | None = AuditLog(settings.logs_dir / "monitor.jsonl", store)
    except ServiceError:
        audit = None
    try:
        result: Result = job(store.db)
        with store.transaction():
            record(store.db, result.derived, result.writes, time.time())
        if audit is not None:
            audit.drain()
    finally:
        lock.release()
        store.close()
    for event in result.derived:
        print(" ".join(f"{k}={v}" for k, v in event.items() if v not in (None, [], "")))
    if result.status != "delivered":
        print(f"runwatch: {run_id}: {result.detail}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _verify_archives(settings: Settings, run_id: str | None, as_json: bool) -> int:
    directory = settings.archive.directory
    if run_id is not None:
        paths = [path for _, path in sorted(run_archives(directory, run_id).items())]
    else:
        paths = sorted(directory.glob("*.zip"))
    if not paths:
        print(
            f"runwatch: no archives{f' for {run_id!r}' if run_id else ''} in {directory}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    results = {str(path): verify_archive(path) for path in paths}
    if as_json:
        print(
            orjson.dumps(
                [{"path": k, "ok": not v, "problems": v} for k, v in results.items()],
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
    else:
        for path, problems in results.items():
            print(f"{path}: " + ("OK" if not problems else "BAD: " + "; ".join(problems)))
    return EXIT_FAILURE if any(results.values()) else EXIT_OK


def audit_verify(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    path = args.file or settings.logs_dir / "monitor.jsonl"
    if not path.exists():
        raise UsageError(f"{path}: no such audit trail")
    store = None
    if (args.file is None or args.db is not None) and settings.database.exists():
        try:
            store = SqliteStore(settings.database)
        except StoreError:
            store = None
    try:
        report = verify_trail(path, store)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the audit trail ({exc.strerror})") from None
    finally:
        if store is not None:
            store.close()
    if args.json:
        print(
            orjson.dumps(
                {
                    "file": str(path),
                    "ok": report.ok,
                    "records": report.records,
                    "first_bad_line": report.first_bad_line,
                    "problem": report.problem,
                    "legacy_lines": report.legacy_lines,
                },
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
    elif report.ok:
        print(
            f"{path}: OK, {report.records:,} records, chain intact"
            + (" and matches the database's anchor" if store is not None else "")
        )
        if report.legacy_lines:
            print(
                f"  warning: the first {report.legacy_lines:,} lines predate the chain; "
                "they are sealed by it but were unprotected before"
            )
    else:
        print(f"{path}: BROKEN at line {report.first_bad_line}: {report.problem}")
    return EXIT_OK if report.ok else EXIT_FAILURE


def deliver_outbox(
    settings: Settings, alerts: AlertSetup, *, quiet: bool = False, rounds: int = 5
) -> None:
    """After `replay --deliver`: deliver every pending entry; what the jobs record (e.g.
    ARCHIVAL_FAILED) is evaluated by the rules, whose new alerts are delivered in turn."""
    store = SqliteStore(settings.database)
    try:
        runtime = Runtime.outbox(store, settings, alerts)
        audit = runtime.audit()
        for _ in range(rounds):
            dispatcher = runtime.dispatcher(out=sys.stderr if quiet else sys.stdout)
            dispatcher.start()
            try:
                while not dispatcher.idle(store.db, horizon=float("inf")):
                    time.sleep(0.05)
            finally:
                dispatcher.stop()
            rows = store.unevaluated()
            if not rows:
                break
            runtime.processor.commit([], now=now_us(), evaluated=rows)
        audit.drain()
    finally:
        store.close()
