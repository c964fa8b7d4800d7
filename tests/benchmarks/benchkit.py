"""What every benchmark script shares: errors, the corpus helpers, percentiles, output."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from runwatch.sinks.reports import nearest_rank


class BenchError(Exception):
    """A command the benchmark runs failed; printed as one message, exit code 1."""


SIMULATOR_MODULES = ("plan", "expected", "writer")


def simulator_digest() -> str:
    """Names the simulator's code, so a cached corpus is regenerated when it changes."""
    digest = hashlib.sha256()
    for name in SIMULATOR_MODULES:
        spec = importlib.util.find_spec(f"runwatch.stream.devtools.{name}")
        if spec is None or spec.origin is None:
            return "unknown"
        digest.update(Path(spec.origin).read_bytes())
    return digest.hexdigest()


def count_lines(files: Sequence[Path]) -> int:
    """Newline count; reading every byte also warms the page cache before timing."""
    lines = 0
    for path in files:
        with path.open("rb") as handle:
            while block := handle.read(8 << 20):
                lines += block.count(b"\n")
    return lines


def percentile(values: Sequence[float], percent: int) -> float:
    """Nearest-rank, as the reports compute it: always one of the measured values."""
    found = nearest_rank(values, percent)
    assert found is not None, "no samples"
    return found


def report_figures(figures: dict[str, Any], path: Path | None) -> None:
    """Print the figures one per line, and write them as JSON when asked."""
    width = max(map(len, figures), default=0)
    for key, value in figures.items():
        print(f"{key:>{width}}: {value}")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2) + "\n")


def main_for(
    name: str,
    parse_args: Callable[[Sequence[str] | None], argparse.Namespace],
    run: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None,
) -> int:
    """A benchmark's entry point: failures are one message and exit 1, never a traceback."""
    args = parse_args(argv)
    try:
        return run(args)
    except BenchError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
