"""`runwatch simulate`: write realistic orchestrator and pattern event files
(the generator is `runwatch.stream.devtools`: `plan` and `writer`)."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from runwatch.stream.cli.common import Command
from runwatch.stream.devtools.writer import simulate
from runwatch.stream.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE

LIVE_SPAN_HOURS: Final = 6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `runwatch simulate`."""
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="directory to write the event files into (created if missing)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=10,
        metavar="N",
        help="number of runs to simulate (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="random seed; the same seed and options give byte-identical files "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--fail-rate",
        type=float,
        default=0.2,
        metavar="P",
        help="probability in [0, 1] that a run has failing tasks (default: %(default)s)",
    )
    parser.add_argument(
        "--stall-rate",
        type=float,
        default=0.1,
        metavar="P",
        help="probability in [0, 1] that a run goes quiet before finishing (default: %(default)s)",
    )
    parser.add_argument(
        "--tasks",
        default="4-12",
        metavar="MIN-MAX",
        help="range of tasks per run, 1 <= MIN <= MAX (default: %(default)s)",
    )
    parser.add_argument(
        "--live",
        type=float,
        metavar="EVENTS_PER_S",
        help="write at this rate, flushing as it goes, with event times ending about now "
        "(for watching `runwatch tail` work); without it, as fast as possible from a fixed "
        "start date",
    )


def _parse_tasks(text: str) -> tuple[int, int]:
    low_text, sep, high_text = text.partition("-")
    try:
        low, high = int(low_text), int(high_text if sep else low_text)
    except ValueError:
        raise ValueError(f"expected MIN-MAX such as 4-12, got {text!r}") from None
    if not 1 <= low <= high:
        raise ValueError(f"need 1 <= MIN <= MAX, got {text!r}")
    return low, high


def run(args: argparse.Namespace) -> int:
    """0 ok, 1 write failure, 2 bad options (said here, naming the option)."""

    def usage(option: str, problem: str) -> int:
        print(f"runwatch simulate: error: {option}: {problem}", file=sys.stderr)
        return EXIT_USAGE

    try:
        tasks = _parse_tasks(str(args.tasks))
    except ValueError as exc:
        return usage("--tasks", str(exc))
    for option, rate in (("--fail-rate", args.fail_rate), ("--stall-rate", args.stall_rate)):
        if not 0.0 <= rate <= 1.0:
            return usage(option, f"must be between 0 and 1, got {rate}")
    if args.runs < 1:
        return usage("--runs", f"must be at least 1, got {args.runs}")
    if args.live is not None and args.live <= 0:
        return usage("--live", f"must be a positive rate, got {args.live}")
    out = Path(args.out)
    # Live runs end around now, so the service's wall-clock stall check sees them as fresh.
    start = datetime.now(UTC) - timedelta(hours=LIVE_SPAN_HOURS) if args.live else None
    try:
        summary = simulate(
            out,
            runs=args.runs,
            seed=args.seed,
            fail_rate=args.fail_rate,
            stall_rate=args.stall_rate,
            tasks_per_run=tasks,
            start=start,
            pace=args.live,
        )
    except OSError as exc:
        print(
            f"runwatch simulate: error: cannot write {exc.filename or out}: {exc.strerror}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    print(
        f"simulated {summary.runs} runs: {summary.events} events in {len(summary.files)} files, "
        f"{summary.bytes_written / 1e6:.1f} MB -> {out}"
    )
    return EXIT_OK


COMMAND = Command(
    name="simulate",
    help="write realistic orchestrator and pattern event files",
    description="Write realistic orchestrator (both shapes) and pattern JSONL files "
    "with retries, failures and stalls; deterministic for a seed.",
    add_arguments=add_arguments,
    run=run,
)
