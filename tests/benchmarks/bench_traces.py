"""Benchmark `runwatch traces export`: how fast finished runs go out as OTLP/HTTP traces.

The simulator writes --runs runs (stall rate 0: every run finishes), `runwatch replay` builds
their database once (reused while the runs, seed and sources are the same), then `runwatch
traces export --db` sends every run to an OTLP/HTTP receiver in this process (the tests' own,
on 127.0.0.1, decoding each request with opentelemetry-proto), --repeat times. Wall clock, CPU
time and peak RSS of the command (measure.py), median of the repeats; runs/s and spans/s. The
spans the receiver decoded must equal what the command reports and have one root per run, or
the script exits 1. Figures, never assertions on time.

Usage:  .venv/bin/python tests/benchmarks/bench_traces.py [--runs 10000] [--repeat 3]
        [--out DIR] [--json FILE]
Smoke:  .venv/bin/python tests/benchmarks/bench_traces.py --runs 300 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1]))
from benchkit import (
    REPO,
    BenchError,
    log,
    machine_facts,
    machine_line,
    main_for,
    remove_database,
    report_figures,
    run_checked,
    runwatch_command,
    source_fingerprint,
)
from measure import measure

from otlp import OtlpReceiver, decode  # the tests' own loopback receiver
from receivers import Recorder


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000, help="finished runs to export")
    parser.add_argument("--repeat", type=int, default=3, help="exports to time (median)")
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench-out" / "traces", help="working folder"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def database(args: argparse.Namespace) -> Path:
    """The replayed database of the simulated runs, built once per runs count and sources."""
    args.out.mkdir(parents=True, exist_ok=True)
    db = args.out / f"runs-{args.runs}.db"
    stamp = args.out / f"runs-{args.runs}.sources"
    if db.exists() and stamp.exists() and stamp.read_text() == source_fingerprint():
        log(f"reusing {db}")
        return db
    events = args.out / f"events-{args.runs}"
    log(f"simulating {args.runs:,} runs into {events}")
    run_checked(
        [
            *runwatch_command(),
            "simulate",
            "--out",
            events,
            "--runs",
            str(args.runs),
            "--seed",
            "1",
            "--stall-rate",
            "0",
        ]
    )
    remove_database(db)
    log(f"replaying them into {db}")
    run_checked([*runwatch_command(), "replay", events, "--db", db], cwd=args.out)
    stamp.write_text(source_fingerprint())
    return db


def export_once(db: Path, collector: OtlpReceiver, out: Path) -> dict[str, Any]:
    collector.received = Recorder()
    command = [
        *runwatch_command(),
        "traces",
        "export",
        "--db",
        str(db),
        "--endpoint",
        collector.url,
        "--json",
        "--no-progress",
    ]
    measured = measure(command, out)
    summary = json.loads(measured.stdout)
    spans = [span for request in collector.requests for span in decode(request)]
    roots = sum(1 for span in spans if not span.parent_id)
    if len(spans) != summary["spans"] or roots != summary["runs_exported"]:
        raise BenchError(
            f"the receiver decoded {len(spans):,} spans and {roots:,} roots; the command "
            f"reported {summary['spans']:,} spans of {summary['runs_exported']:,} runs"
        )
    return {
        "wall_s": measured.wall_s,
        "cpu_s": measured.cpu_s,
        "peak_rss_mb": measured.memory.largest_process_mb,
        "runs": summary["runs_exported"],
        "spans": summary["spans"],
        "requests": summary["requests"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = machine_facts()
    db = database(args)
    rounds = []
    with OtlpReceiver() as collector:
        for round_number in range(1, args.repeat + 1):
            rounds.append(export_once(db, collector, args.out))
            log(f"round {round_number}: {rounds[-1]}")
    wall = statistics.median(r["wall_s"] for r in rounds)
    first = rounds[0]
    return {
        "benchmark": "runwatch traces export over OTLP/HTTP to a loopback receiver",
        "machine": machine_line(machine),
        "runs": first["runs"],
        "spans": first["spans"],
        "requests": first["requests"],
        "repeats": len(rounds),
        "median_wall_s": round(wall, 2),
        "median_cpu_s": round(statistics.median(r["cpu_s"] for r in rounds), 2),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in rounds), 1),
        "runs_per_s": round(first["runs"] / wall, 1),
        "spans_per_s": round(first["spans"] / wall),
        "wall_s_each": [round(r["wall_s"], 2) for r in rounds],
    }


def report(args: argparse.Namespace) -> int:
    report_figures(run(args), args.json)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return main_for("bench_traces", parse_args, report, argv)


if __name__ == "__main__":
    sys.exit(main())
