"""Per-line decode costs, side by side: orjson, msgspec (generic and typed), and the pieces
of runwatch's own `decode` (JSON parse, ISO time, line hash, the Event it builds).

CPU time per line (time.process_time, so other load on the machine matters little), the
median of `--repeat` passes over the well-formed lines among the first `--lines` lines of a
corpus file; when some are not (a corpus with hostile lines), decode is also timed on all.
msgspec is not a dependency of runwatch: without it those rows are left out.

Usage:  .venv/bin/python tests/benchmarks/bench_decode.py FILE [--lines N] [--repeat N]
        [--json FILE]
Smoke:  .venv/bin/python tests/benchmarks/bench_decode.py FILE --lines 5000 --repeat 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from hashlib import blake2b
from pathlib import Path
from typing import Any

import orjson
from benchkit import BenchError, main_for, report_figures

from runwatch.stream.core.decode import decode


def read_lines(path: Path, count: int) -> list[bytes]:
    lines: list[bytes] = []
    with path.open("rb") as handle:
        for line in handle:
            lines.append(line.rstrip(b"\n"))
            if len(lines) >= count:
                break
    if not lines:
        raise BenchError(f"{path} has no lines")
    return lines


def candidates() -> dict[str, Callable[[bytes], Any]]:
    """What to time per line; the msgspec ones only when it is installed."""
    fromisoformat = datetime.fromisoformat
    found: dict[str, Callable[[bytes], Any]] = {
        "orjson.loads": orjson.loads,
        "blake2b(line, 16).hexdigest": lambda line: blake2b(line, digest_size=16).hexdigest(),
        "orjson.loads + fromisoformat(timestamp)": lambda line: fromisoformat(
            orjson.loads(line)["timestamp"]
        ),
        "runwatch decode() (whole)": decode,
    }
    try:
        import msgspec
    except ImportError:
        print("msgspec is not installed: no msgspec rows", file=sys.stderr)
        return found

    class Orchestrator(msgspec.Struct):
        """The fields replay reads; the rest of the line is skipped unparsed."""

        event_type: str
        timestamp: str
        severity: str = "info"
        run_id: str | None = None
        task_id: str | None = None
        workstream_id: str | None = None
        payload: dict[str, Any] = {}

    generic = msgspec.json.Decoder()
    typed = msgspec.json.Decoder(Orchestrator)
    timed = msgspec.json.Decoder(
        msgspec.defstruct(
            "Timed",
            [
                ("event_type", str),
                ("timestamp", datetime),
                ("severity", str, "info"),
                ("run_id", str | None, None),
                ("task_id", str | None, None),
                ("workstream_id", str | None, None),
                ("payload", dict[str, Any], {}),
            ],
        )
    )
    found["msgspec.json.decode (generic dict)"] = generic.decode
    found["msgspec Decoder(Struct of the 7 fields read)"] = typed.decode
    found["msgspec Decoder(Struct, timestamp: datetime)"] = timed.decode
    return found


def time_per_line(function: Callable[[bytes], Any], lines: Sequence[bytes], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.process_time()
        for line in lines:
            function(line)
        samples.append((time.process_time() - started) / len(lines))
    return statistics.median(samples)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Per-line decode costs, side by side.")
    parser.add_argument("file", type=Path, help="a JSONL corpus file")
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, metavar="FILE")
    return parser.parse_args(argv)


def well_formed(line: bytes) -> bool:
    """Whether the raw parsers can take the line: a JSON object with an ISO timestamp."""
    try:
        datetime.fromisoformat(orjson.loads(line)["timestamp"])
    except (orjson.JSONDecodeError, LookupError, TypeError, ValueError):
        return False
    return True


def run(args: argparse.Namespace) -> int:
    every = read_lines(args.file, args.lines)
    # The raw parsers stop at a bad line; runwatch's decode takes every line, bad ones too.
    lines = [line for line in every if well_formed(line)]
    if not lines:
        raise BenchError(f"{args.file} has no well-formed lines")
    mean_bytes = sum(map(len, lines)) / len(lines)
    print(
        f"{len(lines):,} well-formed lines of {args.file} ({len(every) - len(lines):,} others "
        f"left out), {mean_bytes:.0f} bytes a line on average"
    )
    figures: dict[str, Any] = {}
    for name, function in candidates().items():
        figures[f"{name} (µs/line)"] = round(time_per_line(function, lines, args.repeat) * 1e6, 3)
    if len(every) > len(lines):
        cost = time_per_line(decode, every, args.repeat)
        figures["runwatch decode(), every line, bad ones too (µs/line)"] = round(cost * 1e6, 3)
    report_figures(figures, args.json)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return main_for("bench_decode", parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
