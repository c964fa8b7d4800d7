"""`runwatch archive RUN | --verify`: archive a run now, or check archives against manifests."""

from __future__ import annotations

import argparse
import sys

from runwatch.sinks.archive import run_archives, verify_archive
from runwatch.stream.cli.common import (
    Command,
    common_options,
    json_option,
    print_json,
    say,
    settings_from_args,
)
from runwatch.stream.cli.report import run_job_now
from runwatch.stream.delivery import jobs
from runwatch.stream.errors import EXIT_FAILURE, EXIT_OK, UsageError
from runwatch.stream.settings.service import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="?", metavar="RUN", help="the run id")
    common_options(parser)
    parser.add_argument(
        "--new-version", action="store_true", help="write a new version beside the existing archive"
    )
    parser.add_argument(
        "--verify", action="store_true", help="verify RUN's archives (default: every archive)"
    )
    json_option(parser)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.verify:
        return _verify_archives(settings, args.run, args.json)
    if not args.run:
        raise UsageError("archive: give a RUN, or --verify")
    return run_job_now(
        settings,
        args.run,
        lambda db: jobs.archive(db, settings, args.run, new_version=args.new_version),
    )


def _verify_archives(settings: Settings, run_id: str | None, as_json: bool) -> int:
    directory = settings.archive.directory
    if run_id is not None:
        paths = [path for _, path in sorted(run_archives(directory, run_id).items())]
    else:
        paths = sorted(directory.glob("*.zip"))
    if not paths:
        say(
            f"runwatch: no archives{f' for {run_id!r}' if run_id else ''} in {directory}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    results = {str(path): verify_archive(path) for path in paths}
    if as_json:
        print_json([{"path": k, "ok": not v, "problems": v} for k, v in results.items()])
    else:
        for path, problems in results.items():
            say(f"{path}: " + ("OK" if not problems else "BAD: " + "; ".join(problems)))
    return EXIT_FAILURE if any(results.values()) else EXIT_OK


COMMAND = Command(
    name="archive",
    help="archive a run, or verify archives",
    description="Write .archive/<run>.zip (artifacts, events, reports, manifest) for a run. "
    "An existing valid archive is never rewritten. With --verify, re-check "
    "archives against their manifests instead.",
    add_arguments=add_arguments,
    run=run,
)
