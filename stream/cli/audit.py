"""`runwatch audit verify`: check the hash chain of the audit trail."""

from __future__ import annotations

import argparse

from runwatch.sinks.audit import verify_trail
from runwatch.sinks.store.api import StoreError
from runwatch.sinks.store.sqlite import SqliteStore
from runwatch.stream.cli.common import (
    Command,
    common_options,
    file_argument,
    json_option,
    print_json,
    say,
    settings_from_args,
)
from runwatch.stream.errors import EXIT_FAILURE, EXIT_OK, UsageError


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    file_argument(parser, "the trail (default: logs_dir/monitor.jsonl)")
    common_options(parser)
    json_option(parser)


def verify(args: argparse.Namespace) -> int:
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
        print_json(
            {
                "file": str(path),
                "ok": report.ok,
                "records": report.records,
                "first_bad_line": report.first_bad_line,
                "problem": report.problem,
                "legacy_lines": report.legacy_lines,
            }
        )
    elif report.ok:
        say(
            f"{path}: OK, {report.records:,} records, chain intact"
            + (" and matches the database's anchor" if store is not None else "")
        )
        if report.legacy_lines:
            say(
                f"  warning: the first {report.legacy_lines:,} lines predate the chain; "
                "they are sealed by it but were unprotected before"
            )
    else:
        say(f"{path}: BROKEN at line {report.first_bad_line}: {report.problem}")
    return EXIT_OK if report.ok else EXIT_FAILURE


COMMAND = Command(
    name="audit",
    help="check the audit trail",
    description="The audit trail logs/monitor.jsonl is hash-chained.",
    subcommands=(
        Command(
            name="verify",
            help="check the hash chain",
            description="Check every record's hash, the chain and the "
            "sequence, and the database's anchor of the trail's "
            "head; name the first bad line. Exit 1 if bad.",
            add_arguments=add_verify_arguments,
            run=verify,
        ),
    ),
)
